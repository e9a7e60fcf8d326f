"""What the dead-letter tools show of a letter: the payload masked by field name or path, and
its headers, error and stack among them, masked by header name and by the values the payload
masking hid (an error written by another system, or before revsync stopped quoting data)."""

from __future__ import annotations

from typing import Any, cast

from confluent_kafka.schema_registry import SchemaRegistryClient

from revsync.ops import dead_letters as dl
from revsync.ops import masking
from revsync.runtime import headers as h
from revsync.settings import OpsSettings

DEFAULTS = frozenset({"street", "postal_code", "BillingAddress", "Email", "Phone"})
ORDER: dict[str, Any] = {
    "crm_order_id": "801A",
    "shipping_address": {"street": "17 Quill Lane", "city": "Leeds", "postal_code": "LS1 4AP"},
    "BillingAddress": {"street": "2 Dock Road", "city": "Hull"},
    "contact": {"EMAIL": "ap@acme.example", "phone": "+44 113 496 0000"},
    "lines": [{"sku": "PUM-001", "note": None}],
}


def letter(headers: h.Headers, value: bytes = b"{}") -> dl.DeadLetter:
    return dl.DeadLetter("revsync.order-sync.dlt", 0, 7, b"801A", value, headers, 0, "order-sync")


def test_the_payload_is_masked_by_name_or_path_case_insensitively_compound_fields_whole() -> None:
    shown, _ = masking.masked_letter(letter([]), ORDER, DEFAULTS)
    assert shown["shipping_address"] == {"street": "***", "city": "Leeds", "postal_code": "***"}
    assert shown["BillingAddress"] == "***"
    assert shown["contact"] == {"EMAIL": "***", "phone": "***"}
    assert shown["lines"] == ORDER["lines"]


def test_a_header_named_as_a_masked_field_or_a_secret_is_masked() -> None:
    _, headers = masking.masked_letter(
        letter(
            [
                ("email", b"ap@acme.example"),
                ("crm.BillingAddress", b"2 Dock Road, Leeds"),
                ("Authorization", b"Bearer s3cr3t"),
                ("ce_type", b"io.revsync.order.created"),
            ]
        ),
        {},
        DEFAULTS,
    )
    assert headers == [
        ("email", "***"),
        ("crm.BillingAddress", "***"),
        ("Authorization", "***"),
        ("ce_type", "io.revsync.order.created"),
    ]


def test_an_error_quoting_what_the_payload_masks_is_masked_wherever_it_does() -> None:
    quoting = "erp: refused ship-to 17 Quill Lane, LS1 4AP; contact ap@acme.example in Leeds"
    _, headers = masking.masked_letter(
        letter(
            [
                (h.ERROR_MESSAGE, quoting.encode()),
                (h.ERROR_STACK, f"Traceback...\nValueError: {quoting}\n".encode()),
                ("x-note", b"call +44 113 496 0000"),
            ]
        ),
        ORDER,
        DEFAULTS,
    )
    told = dict(headers)
    assert told[h.ERROR_MESSAGE] == "erp: refused ship-to ***, ***; contact *** in Leeds"
    assert told[h.ERROR_STACK] == "Traceback...\nValueError: erp: refused ship-to ***, ***; " + (
        "contact *** in Leeds\n"
    )
    assert told["x-note"] == "call ***"


def test_a_masked_value_too_short_to_tell_apart_is_not_sought_elsewhere() -> None:
    _, headers = masking.masked_letter(
        letter([(h.ERROR_MESSAGE, b"order 801A for NA: PO 12 refused")]),
        {"region": "NA", "po": {"street": "12"}},
        frozenset({"region", "street"}),
    )
    assert dict(headers)[h.ERROR_MESSAGE] == "order 801A for NA: PO 12 refused"


def test_headers_are_shown_as_text_that_cannot_drive_a_terminal() -> None:
    _, headers = masking.masked_letter(letter([(h.ERROR_MESSAGE, b"[/x] \x1b[2J")]), {}, DEFAULTS)
    assert headers == [(h.ERROR_MESSAGE, "[/x] \\x1b[2J")]


def test_a_value_nothing_can_read_is_shown_by_its_length_and_first_bytes_only() -> None:
    unreadable = b"\xff\xfe 17 Quill Lane, ap@acme.example"
    kind, payload = dl.payload(letter([], unreadable), cast(SchemaRegistryClient, None))
    assert (kind, payload) == ("bytes", {"length": len(unreadable), "first_bytes": "fffe203137"})


def test_the_default_fields_hide_salesforces_contact_data_and_undecodable_bytes() -> None:
    change = {
        "payload": {
            "BillingEmailAddress": "ap@acme.example",
            "BillingPhoneNumber": "+44 113 496 0000",
            "PersonMailingAddress": {"Street": "9 Mill Row", "City": "York"},
            "OtherPhone": "+44 1904 000000",
            "Name": "Acme Ltd",
        },
        "payloadBase64": "AAEC",
    }

    shown, _ = masking.masked_letter(letter([]), change, OpsSettings().mask_fields)

    assert shown["payload"] == {
        "BillingEmailAddress": "***",
        "BillingPhoneNumber": "***",
        "PersonMailingAddress": "***",
        "OtherPhone": "***",
        "Name": "Acme Ltd",
    }
    assert shown["payloadBase64"] == "***"
