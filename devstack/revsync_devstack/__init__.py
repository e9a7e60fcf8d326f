"""revsync-devstack: the local Kafka, schema registry and PostgreSQL for development and
tests; never part of the production wheel or image."""
