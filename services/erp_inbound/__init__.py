"""erp_inbound: the changes of ERPs reached through their APIs (NetSuite, Business Central)
as revsync's canonical events, like erp_outbox_publisher does for an ERP's database."""
