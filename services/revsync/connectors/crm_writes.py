"""The CRM write that invoice_sync and fulfillment_sync both make: upsert an ERP record (an
invoice, a shipment) on the CRM order by its ERP id, then move the order's status on.

The child record goes first: if the CRM does not know the order yet, its lookup fails with
a dependency-not-ready error and nothing about the order has changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from revsync.ports.crm import CrmPort
from revsync.runtime.handler import Decision, Inbound, route

ORDER = "Order"
Routes = Mapping[type[Inbound], Callable[[Any, Any], "CrmWrite"]]
"""Input type -> (handler, input) -> the write it makes."""


@dataclass(frozen=True)
class CrmWrite:
    sobject: str
    external_id_field: str
    record: Mapping[str, Any]
    """Includes the external id field."""
    order_id: str
    order_fields: Mapping[str, Any]

    @property
    def external_id(self) -> str:
        return str(self.record[self.external_id_field])


def apply_one(crm: CrmPort, write: CrmWrite) -> None:
    fields = {k: v for k, v in write.record.items() if k != write.external_id_field}
    crm.upsert(write.sobject, write.external_id_field, write.external_id, fields)
    crm.update(ORDER, write.order_id, write.order_fields)


def apply_many(crm: CrmPort, writes: Sequence[CrmWrite]) -> list[Exception | None]:
    """The writes in sObject Collections calls (up to 200 records each): one call per kind of
    child record, one for the orders. Per write, None or the error it failed with."""
    outcome: list[Exception | None] = [None] * len(writes)
    kinds: dict[tuple[str, str], list[int]] = {}
    for index, write in enumerate(writes):
        kinds.setdefault((write.sobject, write.external_id_field), []).append(index)
    for (sobject, field), indexes in kinds.items():
        results = crm.upsert_many(sobject, field, [writes[i].record for i in indexes])
        for index, result in zip(indexes, results, strict=True):
            outcome[index] = result.error()
    ready = [i for i, error in enumerate(outcome) if error is None]
    if ready:
        orders = [{"Id": writes[i].order_id, **writes[i].order_fields} for i in ready]
        for index, result in zip(ready, crm.upsert_many(ORDER, "Id", orders), strict=True):
            outcome[index] = result.error()
    return outcome


class CrmWriteHandler:
    """A handler whose every input is one :class:`CrmWrite`; batches go out as collections.

    ``routes`` says what it takes and the write each input makes.
    """

    def __init__(self, crm: CrmPort, routes: Routes) -> None:
        self.crm = crm
        self.routes = routes

    def write_for(self, inbound: Inbound) -> CrmWrite:
        write: CrmWrite = route(self.routes, inbound)(self, inbound)
        return write

    def __call__(self, inbound: Inbound) -> Decision:
        apply_one(self.crm, self.write_for(inbound))
        return Decision()

    def handle_many(self, inbounds: Sequence[Inbound]) -> list[Decision | Exception]:
        results: list[Decision | Exception] = []
        writes: list[CrmWrite] = []
        places: list[int] = []
        for inbound in inbounds:
            try:
                writes.append(self.write_for(inbound))
            except Exception as refused:  # this input fails alone; the others go on
                results.append(refused)
                continue
            places.append(len(results))
            results.append(Decision())
        for place, failure in zip(places, apply_many(self.crm, writes), strict=True):
            if failure is not None:
                results[place] = failure
        return results
