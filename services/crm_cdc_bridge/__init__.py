"""crm_cdc_bridge: Salesforce change data capture, from the Pub/Sub API into Kafka."""
