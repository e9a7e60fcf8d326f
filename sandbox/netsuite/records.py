"""The books' customers, items, price levels and transactions as NetSuite records (fields in
camelCase, references as ``{"id", "refName"}``, sublists as ``{"items": [...]}``), NetSuite's
record bodies as the books' requests, and the books' refusals as NetSuite's error bodies.

Internal ids are the books' own ids (a customer's ``C-100001``, an order's ``SO-…``, an item's
SKU, a price book's id, a region for a location); subsidiaries and currencies have NetSuite's
numeric ids (:data:`sandbox.netsuite.suiteql.DEFAULT_SUBSIDIARIES`, ``DEFAULT_CURRENCIES``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sandbox.netsuite.suiteql import SALES_ORDER_STATUS

RECORD = "/services/rest/record/v1"
ERROR_TYPES = {
    400: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.1", "Bad Request"),
    401: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.2", "Unauthorized"),
    403: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.4", "Forbidden"),
    404: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.5", "Not Found"),
    405: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.6", "Method Not Allowed"),
    429: ("https://www.rfc-editor.org/rfc/rfc6585.html#section-4", "Too Many Requests"),
    500: ("https://www.rfc-editor.org/rfc/rfc9110.html#section-15.6.1", "Internal Server Error"),
}
STATUS_NAMES = {
    "B": "Pending Fulfillment",
    "G": "Billed",
    "H": "Closed",
    "C": "Cancelled",
}
CUSTOMER_PATHS = {
    "name": "companyName",
    "legal_entity": "subsidiary",
    "currency": "currency",
    "country_code": "custentity_revsync_country",
    "tax_id": "vatRegNumber",
    "duns": "custentity_revsync_duns",
    "billing_address": "addressBook",
    "billing_address.street": "addressBook.items[0].addressBookAddress.addr1",
    "billing_address.city": "addressBook.items[0].addressBookAddress.city",
    "billing_address.state_province": "addressBook.items[0].addressBookAddress.state",
    "billing_address.postal_code": "addressBook.items[0].addressBookAddress.zip",
    "billing_address.country_code": "addressBook.items[0].addressBookAddress.country",
}
"""A customer field of the books -> its path on NetSuite's customer record."""
ORDER_PATHS = {
    "CREDIT_HOLD": "entity",
    "CREDIT_LIMIT_EXCEEDED": "entity",
    "CUSTOMER_BLOCKED": "entity",
    "CUSTOMER_NOT_MASTERED": "entity",
    "UNSUPPORTED_CURRENCY": "currency",
    "UNKNOWN_PRICE_BOOK": "item.items[0].price",
    "ORDER_NOT_CANCELLABLE": "orderStatus",
    "INVALID_ORDER": "item",
}
"""Where a sales order refusal without SKUs points."""
LINE_FIELDS = {
    "UNKNOWN_PRODUCT": "item",
    "PRICING_MISMATCH": "rate",
    "INVALID_ORDER": "custcol_revsync_discount",
}
"""The line field a refusal naming SKUs points at, per line."""


def error_body(status: int, details: Sequence[tuple[str, str, str | None]]) -> dict[str, Any]:
    """NetSuite's error body: ``details`` as (o:errorCode, detail, o:errorPath)."""
    kind, title = ERROR_TYPES.get(status, ERROR_TYPES[400])
    return {
        "type": kind,
        "title": title,
        "status": status,
        "o:errorDetails": [
            {"detail": detail, "o:errorCode": code, **({"o:errorPath": path} if path else {})}
            for code, detail, path in details
        ],
    }


def order_refusal(document: Mapping[str, Any], skus_in_order: list[str]) -> dict[str, Any]:
    """A business refusal of the books (``{"code", "message", "skus"}``) as NetSuite answers
    an account's beforeSubmit script's error: the code as o:errorCode, one detail per line
    at fault (``item.items[N].item`` or ``.rate``), else the header field at fault."""
    code = str(document.get("code"))
    message = str(document.get("message") or code)
    skus = [str(s) for s in document.get("skus") or []]
    if skus and code in LINE_FIELDS:
        details = [
            (code, message, f"item.items[{skus_in_order.index(sku)}].{LINE_FIELDS[code]}")
            for sku in skus
            if sku in skus_in_order
        ]
        if details:
            return error_body(400, details)
    return error_body(400, [(code, message, ORDER_PATHS.get(code))])


def _amount(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def _stamp(value: datetime) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z")


def _ref(internal_id: str | None, name: str | None = None) -> dict[str, str] | None:
    if internal_id is None:
        return None
    return {"id": internal_id, **({"refName": name} if name is not None else {})}


def _link(path: str) -> list[dict[str, str]]:
    return [{"rel": "self", "href": path}]


def pruned(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without its empty fields: NetSuite leaves them out."""
    return {name: value for name, value in record.items() if value is not None}


class Ids:
    """The account's subsidiary and currency internal ids, both ways."""

    def __init__(self, subsidiaries: Mapping[str, str], currencies: Mapping[str, str]) -> None:
        self.subsidiaries = dict(subsidiaries)
        self.legal_entities = {v: k for k, v in subsidiaries.items()}
        self.currencies = dict(currencies)
        self.codes = {v: k for k, v in currencies.items()}

    def currency(self, code: str) -> dict[str, str]:
        return {"id": self.currencies.get(code, code), "refName": code}

    def subsidiary(self, legal_entity: str) -> dict[str, str] | None:
        internal_id = self.subsidiaries.get(legal_entity)
        return None if internal_id is None else {"id": internal_id, "refName": legal_entity}

    def currency_code(self, reference: object) -> str | None:
        internal_id = _reference_id(reference)
        if internal_id is None:
            return None
        return self.codes.get(internal_id, internal_id if internal_id.isalpha() else None)

    def legal_entity(self, reference: object) -> str | None:
        internal_id = _reference_id(reference)
        return None if internal_id is None else self.legal_entities.get(internal_id)


def _reference_id(reference: object) -> str | None:
    if isinstance(reference, Mapping) and reference.get("id") is not None:
        return str(reference["id"])
    return None


def customer_record(
    row: Mapping[str, Any], credit: Mapping[str, Any] | None, ids: Ids, *, expand: bool
) -> dict[str, Any]:
    """A books customer as NetSuite's customer record; ``credit`` adds balance and unbilled
    orders (the books' unpaid invoices and open orders)."""
    path = f"{RECORD}/customer/{row['id']}"
    address = None
    if row["billing_street"] is not None:
        address = pruned(
            {
                "addr1": row["billing_street"],
                "city": row["billing_city"],
                "state": row["billing_state_province"],
                "zip": row["billing_postal_code"],
                "country": {"id": row["billing_country_code"]},
            }
        )
    book: dict[str, Any] = {"links": _link(f"{path}/addressBook")}
    if expand:
        book["items"] = (
            []
            if address is None
            else [{"defaultBilling": True, "defaultShipping": False, "addressBookAddress": address}]
        )
    exposure = None
    if credit is not None:
        exposure = {
            "balance": float(Decimal(credit["balance"])),
            "unbilledOrders": float(Decimal(credit["unbilled"])),
        }
    return pruned(
        {
            "links": _link(path),
            "id": row["id"],
            "externalId": row["crm_account_id"],
            "entityId": row["number"],
            "companyName": row["name"],
            "subsidiary": ids.subsidiary(row["legal_entity"]),
            "currency": ids.currency(row["currency"].strip()),
            "creditLimit": _amount(row["credit_limit"]),
            "terms": {"id": row["payment_terms"], "refName": row["payment_terms"]},
            "creditHoldOverride": (
                {"id": "ON", "refName": "On"}
                if row["status"] == "credit_hold"
                else {"id": "AUTO", "refName": "Auto"}
            ),
            "isInactive": row["status"] == "blocked",
            "vatRegNumber": row["tax_id"],
            "custentity_revsync_duns": row["duns"],
            "custentity_revsync_country": row["country_code"],
            "custentity_revsync_blocks": ",".join(row["blocks"]) or None,
            "addressBook": book,
            "lastModifiedDate": _stamp(row["updated_at"]),
            **(exposure or {}),
        }
    )


def customer_body(
    record: Mapping[str, Any], existing: Mapping[str, Any] | None, ids: Ids
) -> tuple[dict[str, Any], list[str]]:
    """The books' customer body (``name, legal_entity, currency, country_code, tax_id, duns,
    billing_address``) a customer record asks for, over ``existing`` (a PATCH keeps what the
    record leaves out), and the fields it names that the simulator does not know of."""
    fields = {
        "companyName": "name",
        "vatRegNumber": "tax_id",
        "custentity_revsync_duns": "duns",
        "custentity_revsync_country": "country_code",
    }
    known = {*fields, "subsidiary", "currency", "addressBook", "externalId"}
    unknown = sorted(set(record) - known)
    body: dict[str, Any] = {}
    if existing is not None:
        body = {
            "name": existing["name"],
            "legal_entity": existing["legal_entity"],
            "currency": existing["currency"].strip(),
            "country_code": existing["country_code"],
            "tax_id": existing["tax_id"],
            "duns": existing["duns"],
            "billing_address": (
                None
                if existing["billing_street"] is None
                else {
                    "street": existing["billing_street"],
                    "city": existing["billing_city"],
                    "state_province": existing["billing_state_province"],
                    "postal_code": existing["billing_postal_code"],
                    "country_code": existing["billing_country_code"],
                }
            ),
        }
    for field, name in fields.items():
        if field in record:
            body[name] = record[field]
    if "subsidiary" in record:
        body["legal_entity"] = ids.legal_entity(record["subsidiary"]) or "?"
    if "currency" in record:
        body["currency"] = ids.currency_code(record["currency"]) or "?"
    if "addressBook" in record:
        body["billing_address"] = _billing_address(record["addressBook"])
    return body, unknown


def _billing_address(book: object) -> Any:
    items = book.get("items") if isinstance(book, Mapping) else None
    if not isinstance(items, list):
        return None
    billing = [i for i in items if isinstance(i, Mapping) and i.get("defaultBilling")]
    if not billing:
        return None
    address = billing[0].get("addressBookAddress")
    if not isinstance(address, Mapping):
        return {}
    country = address.get("country")
    return {
        "street": address.get("addr1"),
        "city": address.get("city"),
        "state_province": address.get("state"),
        "postal_code": address.get("zip"),
        "country_code": _reference_id(country) if isinstance(country, Mapping) else country,
    }


def order_record(
    order: Mapping[str, Any], lines: list[Mapping[str, Any]], ids: Ids, *, expand: bool
) -> dict[str, Any]:
    """A books order (its API document) as NetSuite's salesOrder record."""
    path = f"{RECORD}/salesOrder/{order['id']}"
    status = SALES_ORDER_STATUS[order["status"]]
    reference = {"id": status, "refName": STATUS_NAMES[status]}
    ship_to = order["ship_to"] or {}
    item: dict[str, Any] = {"links": _link(f"{path}/item")}
    if expand:
        item["items"] = [
            {
                "line": line["line_number"],
                "item": {"id": line["sku"], "refName": line["sku"]},
                "quantity": float(Decimal(line["quantity"])),
                "rate": float(Decimal(line["unit_price"])),
                "amount": float(Decimal(line["line_total"])),
                "price": {"id": order["price_book_id"]},
                "custcol_revsync_list_rate": float(Decimal(line["list_price"])),
                "custcol_revsync_discount": float(Decimal(line["discount_amount"])),
                "custcol_revsync_tax_amount": float(Decimal(line["tax_amount"])),
            }
            for line in lines
        ]
    created = datetime.fromisoformat(order["created_at"])
    return pruned(
        {
            "links": _link(path),
            "id": order["id"],
            "externalId": order["external_id"],
            "tranId": order["number"],
            "entity": {"id": order["customer_id"]},
            "subsidiary": ids.subsidiary(order["legal_entity"]),
            "currency": ids.currency(order["currency"].strip()),
            "location": {"id": order["region"], "refName": order["region"]},
            "otherRefNum": order["po_number"],
            "shipDate": order["requested_delivery_date"],
            "shippingAddress": pruned(
                {
                    "addr1": ship_to.get("street"),
                    "city": ship_to.get("city"),
                    "state": ship_to.get("state_province"),
                    "zip": ship_to.get("postal_code"),
                    "country": {"id": ship_to.get("country_code")},
                }
            ),
            "memo": order["correlation_id"],
            "status": reference,
            "orderStatus": reference,
            "subtotal": float(Decimal(order["subtotal"])),
            "taxTotal": float(Decimal(order["tax_total"])),
            "total": float(Decimal(order["grand_total"])),
            "custbody_revsync_credit_check": order["credit_check"],
            "custbody_revsync_pricing_outcome": order["pricing_outcome"],
            "custbody_revsync_cancel_reason": order["cancel_reason"],
            "tranDate": created.date().isoformat(),
            "createdDate": _stamp(created),
            "item": item,
        }
    )


def order_body(
    external_id: str, record: Mapping[str, Any], ids: Ids
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The books' order body (``POST /api/v1/sales-orders``) a salesOrder record asks for,
    and the fields at fault as (o:errorPath, detail) when it cannot be read."""
    faults: list[tuple[str, str]] = []
    legal_entity = ids.legal_entity(record.get("subsidiary"))
    if legal_entity is None:
        faults.append(("subsidiary", "an existing subsidiary is required"))
    currency = ids.currency_code(record.get("currency"))
    if currency is None:
        faults.append(("currency", "an existing currency is required"))
    customer = _reference_id(record.get("entity"))
    if customer is None:
        faults.append(("entity", "a customer is required"))
    region = _reference_id(record.get("location"))
    if region is None:
        faults.append(("location", "a location is required"))
    items = record.get("item", {}).get("items") if isinstance(record.get("item"), Mapping) else None
    if not isinstance(items, list) or not items:
        faults.append(("item", "at least one line is required"))
        items = []
    levels = {_reference_id(line.get("price")) for line in items if isinstance(line, Mapping)}
    if len(levels) > 1 or None in levels:
        faults.append(("item.items[0].price", "every line names the same price level"))
    address = record.get("shippingAddress")
    address = address if isinstance(address, Mapping) else {}
    country = address.get("country")
    lines = []
    for index, line in enumerate(items):
        if not isinstance(line, Mapping):
            faults.append((f"item.items[{index}]", "a line is an object"))
            continue
        lines.append(
            {
                "line_number": line.get("line", index + 1),
                "sku": _reference_id(line.get("item")),
                "quantity": _decimal(line.get("quantity")),
                "unit_price": _decimal(line.get("rate")),
                "discount_amount": _decimal(line.get("custcol_revsync_discount", 0)),
                "tax_amount": _decimal(line.get("custcol_revsync_tax_amount", 0)),
            }
        )
    body = {
        "external_id": external_id,
        "customer_id": customer,
        "currency": currency,
        "price_book_id": next(iter(levels)) if len(levels) == 1 else None,
        "legal_entity": legal_entity,
        "region": region,
        "po_number": record.get("otherRefNum"),
        "requested_delivery_date": record.get("shipDate"),
        "ship_to": {
            "street": address.get("addr1"),
            "city": address.get("city"),
            "state_province": address.get("state"),
            "postal_code": address.get("zip"),
            "country_code": _reference_id(country) if isinstance(country, Mapping) else country,
        },
        "lines": lines,
        "correlation_id": record.get("memo"),
    }
    return body, faults


def _decimal(value: object) -> object:
    """A JSON number as an exact decimal (its shortest repr), anything else as it is."""
    if isinstance(value, float | int) and not isinstance(value, bool):
        return str(Decimal(repr(value)))
    return value


def invoice_record(row: Mapping[str, Any], ids: Ids) -> dict[str, Any]:
    path = f"{RECORD}/invoice/{row['id']}"
    return pruned(
        {
            "links": _link(path),
            "id": row["id"],
            "tranId": row["number"],
            "createdFrom": {"id": row["sales_order_id"], "refName": row["order_number"]},
            "entity": {"id": row["customer_id"]},
            "subsidiary": ids.subsidiary(row["legal_entity"]),
            "currency": ids.currency(row["currency"].strip()),
            "tranDate": row["posting_date"].isoformat(),
            "dueDate": row["due_date"].isoformat(),
            "terms": {"id": row["payment_terms"], "refName": row["payment_terms"]},
            "subtotal": float(row["subtotal"]),
            "taxTotal": float(row["tax_total"]),
            "total": float(row["grand_total"]),
            "amountRemaining": float(row["amount_due"]),
            "status": (
                {"id": "B", "refName": "Paid In Full"}
                if row["status"] == "paid"
                else {"id": "A", "refName": "Open"}
            ),
            "createdDate": _stamp(row["posted_at"]),
        }
    )


def fulfillment_record(row: Mapping[str, Any]) -> dict[str, Any]:
    path = f"{RECORD}/itemFulfillment/{row['id']}"
    return pruned(
        {
            "links": _link(path),
            "id": row["id"],
            "tranId": row["number"],
            "createdFrom": {"id": row["sales_order_id"], "refName": row["order_number"]},
            "entity": {"id": row["customer_id"]},
            "shipStatus": {"id": "C", "refName": "Shipped"},
            "shipDate": row["shipped_at"].date().isoformat(),
            "tranDate": row["shipped_at"].date().isoformat(),
            "location": {"id": row["warehouse"]} if row["warehouse"] else None,
            "custbody_revsync_completeness": row["completeness"],
            "package": {
                "items": [
                    pruned(
                        {
                            "packageTrackingNumber": row["tracking_number"],
                            "packageDescr": row["carrier"],
                            "custrecord_revsync_tracking_url": row["tracking_url"],
                        }
                    )
                ]
            },
            "shipCarrier": {"id": row["carrier"], "refName": row["carrier"]},
            "item": {
                "items": [
                    {
                        "orderLine": line["line_number"],
                        "item": {"id": line["sku"], "refName": line["sku"]},
                        "quantity": float(Decimal(line["quantity"])),
                    }
                    for line in row["lines"]
                ]
            },
            "createdDate": _stamp(row["shipped_at"]),
        }
    )


def payment_record(row: Mapping[str, Any], ids: Ids) -> dict[str, Any]:
    path = f"{RECORD}/customerPayment/{row['id']}"
    return pruned(
        {
            "links": _link(path),
            "id": row["id"],
            "tranId": row["number"],
            "customer": {"id": row["customer_id"]},
            "payment": float(row["amount"]),
            "currency": ids.currency(row["currency"].strip()),
            "paymentMethod": {"id": row["method"], "refName": row["method"]},
            "tranDate": row["received_at"].date().isoformat(),
            "apply": {
                "items": [
                    {
                        "doc": {"id": row["invoice_id"], "refName": row["invoice_number"]},
                        "apply": True,
                        "amount": float(row["amount"]),
                    }
                ]
            },
            "createdDate": _stamp(row["received_at"]),
        }
    )


def item_record(row: Mapping[str, Any], ids: Ids) -> dict[str, Any]:
    path = f"{RECORD}/inventoryItem/{row['sku']}"
    subsidiaries = [ids.subsidiary(entity) for entity in row["legal_entities"]]
    return pruned(
        {
            "links": _link(path),
            "id": row["sku"],
            "itemId": row["sku"],
            "displayName": row["name"],
            "class": {"id": row["product_line"], "refName": row["product_line"]},
            "isInactive": not row["active"],
            "saleUnit": {"id": row["unit_of_measure"], "refName": row["unit_of_measure"]},
            "subsidiary": {"items": [s for s in subsidiaries if s is not None]},
            "includeChildren": not row["legal_entities"],
        }
    )


def price_level_record(row: Mapping[str, Any], ids: Ids) -> dict[str, Any]:
    path = f"{RECORD}/priceLevel/{row['id']}"
    return pruned(
        {
            "links": _link(path),
            "id": row["id"],
            "name": row["name"],
            "custrecord_revsync_currency": ids.currency(row["currency"].strip()),
            "custrecord_revsync_subsidiary": ids.subsidiary(row["legal_entity"]),
        }
    )
