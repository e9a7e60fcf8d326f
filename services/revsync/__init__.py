"""revsync: keeps a CRM (Salesforce) and an ERP in sync across order-to-cash, on Kafka."""
