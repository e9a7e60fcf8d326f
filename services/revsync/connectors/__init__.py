"""Adapters to the external systems: the CRM (Salesforce REST) and the ERP."""
