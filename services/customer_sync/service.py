"""customer_sync's wiring: the ``customer-sync`` handler, binding :mod:`customer_sync.logic` to
the CRM and ERP adapters and the catalog's topics.

Both directions in one consumer:
- CRM -> ERP: an account's change events, and the first activated order of an account the ERP
  does not have yet, master the account as an ERP customer (its CRM-owned fields, by the
  account id as external id) unless it matches an existing customer, which becomes a
  duplicate for a data steward instead.
- ERP -> CRM: the ERP's customer master records and credit changes (from its outbox) write
  the ERP-owned fields onto the account: its ERP id and number first of all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter

from customer_sync import logic
from revsync.connectors.cdc import Integration, RecordChange, narrowed
from revsync.contracts.catalog import Catalog
from revsync.contracts.events import (
    CreditStatusChanged,
    CustomerMastered,
    CustomerUpserted,
    DuplicateCustomerSuspected,
    Envelope,
    Event,
    OrderCreated,
)
from revsync.contracts.ownership import ObjectOwnership, Owner, Ownership
from revsync.deployables import ConsumerDeployable, Context, output_topics
from revsync.errors import described
from revsync.ports.crm import CrmPort, RecordNotFound
from revsync.ports.erp import Customer, ErpPort
from revsync.rules import customers
from revsync.runtime.handler import Decision, Emission, FailedPart, Inbound, route

log = logging.getLogger(__name__)
OUTPUTS: tuple[type[Event], ...] = (CustomerUpserted, DuplicateCustomerSuspected)
INCOMPLETE = Counter(
    "revsync_customer_incomplete_accounts_total",
    "Accounts that qualify for the ERP but lack what a customer needs: not mastered yet.",
)
OVERRULED = Counter(
    "revsync_customer_ownership_violations_total",
    "CRM edits of ERP-owned account fields: not synced, reported and set back.",
    ["field"],
)


class CustomerSync:
    """The ``customer-sync`` handler."""

    def __init__(
        self,
        *,
        crm: CrmPort,
        erp: ErpPort,
        ownership: ObjectOwnership,
        integration: Integration,
        qualify: frozenset[customers.Qualify],
        match: frozenset[logic.MatchRule],
        catalog: Catalog,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.crm = crm
        self.erp = erp
        self.ownership = ownership
        self.integration = integration
        self.qualify = qualify
        self.match = match
        self.clock = clock
        self.topics = output_topics(catalog, OUTPUTS)
        self._fields = customers.account_fields(ownership)

    def __call__(self, inbound: Inbound) -> Decision:
        decision: Decision = route(ROUTES, inbound)(self, inbound)
        return decision

    # --- CRM -> ERP -----------------------------------------------------------------------------

    def account_changed(self, change: RecordChange) -> Decision:
        if logic.overflowed(change):
            found = self.crm.query(logic.reconcile_query(change.header.committed_at))
            log.info("account change overflow: reconciling %d accounts", len(found))
            steps = [logic.AccountStep(str(row["Id"]), sync=True) for row in found]
        else:
            steps = logic.plan(change, self.integration, self.ownership)
        if len(steps) == 1:
            return Decision(emits=self._account(change.envelope, steps[0]))
        # Many accounts in one event: each on its own, so that one failing holds back only
        # itself.
        emits: list[Emission] = []
        failed: list[FailedPart] = []
        for step in steps:
            try:
                emits += self._account(change.envelope, step)
            except Exception as error:  # routed on as that account's own record
                log.warning(
                    "account %s of a merged change failed: %s", step.account_id, described(error)
                )
                narrow = narrowed(change, step.account_id)
                failed.append(FailedPart(step.account_id.encode(), narrow, error))
        return Decision(emits=emits, failed=failed)

    def order_created(self, order: OrderCreated) -> Decision:
        """An order of an account the ERP did not have when it was captured: the account's
        first activated order masters it (when so configured); order-sync waits for it."""
        if order.erp_customer_id is not None or customers.Qualify.FIRST_ORDER not in self.qualify:
            return Decision()
        account = self._read(order.crm_account_id)
        if account is None:
            return Decision()
        existing = self.erp.customer_by_account(order.crm_account_id)
        return Decision(emits=self._master(order.envelope, account, existing, by_order=True))

    def _account(self, cause: Envelope, step: logic.AccountStep) -> list[Emission]:
        if not (step.sync or step.overruled):
            return []
        account = self._read(step.account_id)
        if account is None:
            return []
        existing = self.erp.customer_by_account(step.account_id)
        if step.overruled:
            self._set_back(account, existing, step.overruled)
        return self._master(cause, account, existing, asked=step.asked) if step.sync else []

    def _master(
        self,
        cause: Envelope,
        account: dict[str, Any],
        existing: Customer | None,
        *,
        by_order: bool = False,
        asked: bool = False,
    ) -> list[Emission]:
        """The account's customer created or brought up to date in the ERP (``existing``, the
        one it has): when it has one already, qualifies (``by_order``: an order of it was
        activated), or a person asked."""
        account_id = str(account["Id"])
        if existing is None and not (asked or customers.qualifies(account, self.qualify, by_order)):
            return []
        try:
            wanted = customers.draft(account, self.ownership, existing)
        except customers.AccountNotMasterable as why:
            # Not a dead letter, which would hold back the account's later changes, the fix
            # among them: that fix masters it. An order of it is rejected by order-sync,
            # saying what is missing.
            INCOMPLETE.inc()
            log.warning("%s; not mastered until the CRM has them", why)
            return []
        key = logic.upsert_key(cause, account_id)
        if existing is not None:
            fields = logic.changed_fields(wanted, existing)
            if not fields:
                return []
            result = self.erp.upsert_customer(wanted, key)
            return [
                self._emit(
                    logic.upserted(cause, result.customer, result.created, fields, self.clock())
                )
            ]
        found = logic.matches(
            wanted, self.erp.find_customers(logic.query(wanted, self.match)), self.match
        )
        if found:
            log.warning(
                "account %s matches %d ERP customer(s); not created, a steward decides",
                account_id,
                len(found),
            )
            return [self._emit(logic.duplicate(cause, wanted, found, self.clock()))]
        result = self.erp.upsert_customer(wanted, key)
        fields = sorted(self.ownership.owned_by(Owner.CRM))
        return [
            self._emit(logic.upserted(cause, result.customer, result.created, fields, self.clock()))
        ]

    def _set_back(
        self, account: dict[str, Any], customer: Customer | None, overruled: Sequence[str]
    ) -> None:
        """A person set ERP-owned fields in the CRM: not synced. Where they differ from the
        ERP's values, they are reported (a warning and the counter) and the ERP's values go
        back over them; an account the ERP has no customer for yet keeps them until it has
        (its values then come from the ERP like any account's)."""
        if customer is None:
            theirs = ", ".join(overruled)
            log.warning(
                "account %s: %s set in the CRM but owned by the ERP, which has no customer "
                "for it yet; not synced",
                account["Id"],
                theirs,
            )
            return
        values = logic.customer_values(customer, self.ownership)
        changes = logic.differing({name: values.get(name) for name in overruled}, account)
        if not changes:
            return  # what the person set is what the ERP holds: nothing to report
        for name in changes:
            OVERRULED.labels(name).inc()
        log.warning(
            "account %s: %s edited in the CRM but owned by the ERP; not synced, set back",
            account["Id"],
            ", ".join(sorted(changes)),
        )
        self.crm.update(customers.ACCOUNT, str(account["Id"]), changes)

    # --- ERP -> CRM ---------------------------------------------------------------------------

    def erp_changed(self, event: CustomerMastered | CreditStatusChanged) -> Decision:
        """The ERP-owned fields onto the account, those it does not hold already."""
        wanted = logic.erp_values(event, self.ownership)
        account = self._read(event.crm_account_id, list(wanted))
        if account is None:
            return Decision()
        changes = logic.differing(wanted, account)
        if changes:
            self.crm.update(customers.ACCOUNT, event.crm_account_id, changes)
        return Decision()

    # --- helpers --------------------------------------------------------------------------------

    def _read(self, account_id: str, fields: list[str] | None = None) -> dict[str, Any] | None:
        try:
            return self.crm.get(customers.ACCOUNT, account_id, fields or self._fields)
        except RecordNotFound:
            log.warning("account %s is no longer in the CRM; nothing to sync", account_id)
            return None

    def _emit(self, event: Event) -> Emission:
        return Emission(self.topics[type(event)], event)


ROUTES: dict[type[Inbound], Callable[[CustomerSync, Any], Decision]] = {
    RecordChange: CustomerSync.account_changed,
    OrderCreated: CustomerSync.order_created,
    CustomerMastered: CustomerSync.erp_changed,
    CreditStatusChanged: CustomerSync.erp_changed,
}
"""What customer-sync takes, and which step handles each."""


def build(context: Context) -> CustomerSync:
    s = context.service
    return CustomerSync(
        crm=context.crm(),
        erp=context.erp(),
        ownership=Ownership.load(context.settings.schemas_dir).customer,
        integration=Integration(s.crm_client_name, s.crm_integration_user_id),
        qualify=customers.parse_choices(s.customer_qualify, customers.Qualify),
        match=customers.parse_choices(s.customer_match, logic.MatchRule),
        catalog=context.catalog,
    )


DEPLOYABLE = ConsumerDeployable(
    name="customer-sync",
    service="customer_sync",
    inputs=tuple(ROUTES),
    outputs=OUTPUTS,
    build=build,
)
