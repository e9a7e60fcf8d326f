"""customer_sync: CRM accounts mastered as ERP customers, the ERP's customer fields written back."""
