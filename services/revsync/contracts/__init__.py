"""Event contracts: the topic catalog, the Avro schemas, typed events and their serde."""
