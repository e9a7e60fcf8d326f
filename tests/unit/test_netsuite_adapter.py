"""The NetSuite adapter's pure parts: its configuration's checks, the account's URL, the
idempotency keys it derives and the SuiteQL literals it writes."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from pydantic import SecretStr

from revsync.connectors.netsuite import (
    ORDER_STATUSES,
    NetSuiteAdapter,
    NetSuiteConfig,
    account_url,
    idempotency_key,
    literal,
)
from revsync.ports.erp import SalesOrderStatus

pytestmark = pytest.mark.unit

KEY = (
    rsa.generate_private_key(public_exponent=65537, key_size=2048)
    .private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    .decode()
)
CONFIG = NetSuiteConfig(
    base_url="https://1234567-sb1.suitetalk.api.netsuite.com",
    account_id="1234567_SB1",
    client_id="client",
    certificate_id="cert",
    private_key=SecretStr(KEY),
    subsidiaries={"US01": "1"},
)


def test_the_account_url_is_the_lower_cased_account_id_with_dashes() -> None:
    assert account_url("1234567_SB1") == "https://1234567-sb1.suitetalk.api.netsuite.com"


def test_idempotency_keys_are_stable_uuids_per_operation_and_key() -> None:
    key = "order-created:801A"

    derived = idempotency_key("salesOrder.create", key)

    assert uuid.UUID(derived).version == 5
    assert derived == idempotency_key("salesOrder.create", key)
    assert len({derived, idempotency_key("salesOrder.cancel", key)}) == 2
    # Pinned: a key derived before an upgrade must be the key derived after it.
    assert derived == "eab7c632-e770-51bf-89a1-0aef7f6e307a"


def test_literals_double_their_quotes() -> None:
    assert literal("O'Brien") == "'O''Brien'"
    assert literal("') OR 1=1 --") == "''') OR 1=1 --'"


def test_a_sales_order_status_letter_is_a_port_status() -> None:
    assert ORDER_STATUSES["B"] is SalesOrderStatus.OPEN
    assert ORDER_STATUSES["G"] is SalesOrderStatus.INVOICED
    assert ORDER_STATUSES["H"] is SalesOrderStatus.SHIPPED
    assert ORDER_STATUSES["C"] is SalesOrderStatus.CANCELLED


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"subsidiaries": {}}, "subsidiaries"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"algorithm": "HS256"}, "algorithm"),
        ({"algorithm": "ES256"}, "secp256r1"),
        ({"private_key": SecretStr("not a key")}, "PEM"),
        ({"assertion_lifetime_s": 7200}, "assertion_lifetime_s"),
    ],
)
def test_a_wrong_configuration_stops_the_adapter_at_start_up(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        NetSuiteAdapter(replace(CONFIG, **changes))  # type: ignore[arg-type]

    assert KEY not in str(refused.value)


def test_the_private_key_stays_out_of_the_configurations_text() -> None:
    assert KEY not in repr(CONFIG)
    assert "BEGIN PRIVATE KEY" not in str(CONFIG)
