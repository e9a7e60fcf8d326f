"""The business rules the services share, free of I/O: which order acceptance rules apply
(:mod:`.book`, per legal entity and region) and how an order, or a quote's lines and customer,
are judged by them (:mod:`.checks`): order_sync applies them when it places an order, the
process API while the quote is priced, so a quote that passes is an order that passes; and
which CRM accounts become ERP customers (:mod:`.customers`).
"""
