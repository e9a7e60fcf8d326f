"""process_api: the HTTP API the CRM calls while a person waits (pricing, credit, stock), and
order submission for channels without change data capture."""
