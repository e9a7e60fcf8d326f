"""The ports: what revsync's services need from the CRM and the ERP, with the value types and
errors they speak in. Services depend on these; adapters in :mod:`revsync.connectors` and the
test fakes implement them."""
