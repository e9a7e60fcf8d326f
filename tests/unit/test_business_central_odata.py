"""The Business Central simulator's OData: ``$filter`` turned into SQL over the fields an
entity lets it name (and nothing else), exact decimals in JSON, ETags and timestamps as BC
writes them."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sandbox.business_central.odata import (
    Field,
    dumps,
    etag,
    filter_sql,
    loads,
    matches_etag,
    timestamp,
)
from sandbox.http import HttpFailure

pytestmark = pytest.mark.unit

FIELDS = {
    "number": Field('"number"'),
    "lastModifiedDateTime": Field('"lastModifiedDateTime"', "datetime"),
    "postingDate": Field('"postingDate"', "date"),
    "amount": Field("amount", "number"),
    "blocked": Field("blocked", "bool"),
}


def test_comparisons_joined_and_grouped_become_sql_with_parameters() -> None:
    condition, parameters = filter_sql(
        "lastModifiedDateTime gt 2026-12-07T10:00:00Z and (number eq 'O''Brien' or "
        "amount ge 12.50) and not blocked eq true",
        FIELDS,
    )

    assert condition == (
        '(("lastModifiedDateTime" > %(filter_0)s) AND (("number" = %(filter_1)s) OR '
        "(amount >= %(filter_2)s)) AND NOT ((blocked = %(filter_3)s)))"
    )
    assert parameters == {
        "filter_0": datetime(2026, 12, 7, 10, tzinfo=UTC),
        "filter_1": "O'Brien",
        "filter_2": Decimal("12.50"),
        "filter_3": True,
    }


def test_literals_take_their_fields_types() -> None:
    _, parameters = filter_sql(
        "postingDate le 2026-12-01 and lastModifiedDateTime lt 2026-12-07T10:00:00.123+01:00 "
        "and number ne null",
        FIELDS,
    )

    assert parameters == {
        "filter_0": date(2026, 12, 1),
        "filter_1": datetime(2026, 12, 7, 10, 0, 0, 123000, tzinfo=timezone(timedelta(hours=1))),
    }


@pytest.mark.parametrize(
    "text",
    [
        "colour eq 'red'",
        "number eq red",
        "number like 'x'",
        "amount eq '12'",
        "lastModifiedDateTime gt 2026-12-07",
        "(number eq 'x'",
        "number eq 'x' extra",
        "number eq",
        "amount gt null",
        "number eq 'x'; DROP TABLE customers",
    ],
)
def test_anything_outside_the_fields_and_forms_is_a_bad_request(text: str) -> None:
    with pytest.raises(HttpFailure) as refused:
        filter_sql(text, FIELDS)

    assert refused.value.response.status == 400
    assert refused.value.response.body["error"]["code"] == "BadRequest"


def test_a_guid_may_go_unquoted_as_bc_takes_it() -> None:
    guid = "4cc17681-2246-55dc-a6b2-30b175f40db4"

    assert filter_sql(f"number eq {guid}", FIELDS)[1] == {"filter_0": guid}


def test_amounts_travel_as_exact_json_numbers() -> None:
    body = {"amount": Decimal("12345678901234567.8901"), "text": "x", "n": 1}

    raw = dumps(body)

    assert raw == b'{"amount": 12345678901234567.8901, "text": "x", "n": 1}'
    assert loads(raw)["amount"] == Decimal("12345678901234567.8901")
    assert json.loads(dumps({"text": "decimal:1"}))["text"] == "decimal:1"


def test_timestamps_are_utc_to_the_millisecond() -> None:
    moment = datetime(2026, 12, 7, 11, 30, 1, 987654, tzinfo=timezone(timedelta(hours=1)))

    assert timestamp(moment) == "2026-12-07T10:30:01.987Z"


def test_an_etag_changes_with_the_version_and_if_match_takes_it_or_a_star() -> None:
    first, second = etag("customers", "C-1", "v1"), etag("customers", "C-1", "v2")

    assert first.startswith('W/"')
    assert first != second
    assert matches_etag(first, first)
    assert matches_etag("*", first)
    assert not matches_etag(second, first)
    with pytest.raises(HttpFailure) as missing:
        matches_etag(None, first)
    assert missing.value.response.status == 400
