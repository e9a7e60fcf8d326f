"""erp_outbox_publisher: the ERP's outbox rows published as revsync's canonical Avro events."""
