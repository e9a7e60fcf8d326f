"""order_sync's wiring: its handler, binding the decisions in :mod:`order_sync.logic` to the
CRM and ERP adapters and to the catalog's topics.

One consumer group, ``order-sync``, reads the CRM's change events (captured into canonical
events) and those canonical order-created and order-cancelled events (placed into, or
cancelled in, the ERP), all keyed by the CRM order id so one order's inputs keep their order;
and the ERP's customer master and credit changes, which make it forget what it cached of that
customer rather than wait out the cache's time to live.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from order_sync import logic
from revsync.connectors.cache import TtlCache
from revsync.connectors.cdc import Integration, RecordChange, narrowed
from revsync.contracts.catalog import Catalog
from revsync.contracts.events import (
    CreditStatusChanged,
    CustomerMastered,
    Envelope,
    Event,
    OrderAccepted,
    OrderCancelled,
    OrderCreated,
    OrderRejected,
    RejectionReason,
    SourceSystem,
)
from revsync.contracts.ownership import ObjectOwnership, Ownership
from revsync.deployables import ConsumerDeployable, Context, output_topics
from revsync.errors import DependencyNotReady, described
from revsync.ports.crm import CrmPort, RecordNotFound
from revsync.ports.erp import Customer, ErpPort, ErpRejected, PriceBook, Product
from revsync.rules import checks, customers
from revsync.rules.book import RuleBook
from revsync.runtime.handler import (
    Decision,
    Emission,
    FailedPart,
    Inbound,
    handle_concurrently,
    route,
)

log = logging.getLogger(__name__)
OUTPUTS: tuple[type[Event], ...] = (OrderCreated, OrderCancelled, OrderAccepted, OrderRejected)


class CustomerNotMastered(DependencyNotReady):
    """The order's account has no ERP customer yet: customer_sync masters it, and the order
    waits through the retry tiers until it has one (and, past the last, in the dead letters,
    whence a replay places it once the customer exists)."""


class OrderSync:
    """The ``order-sync`` handler."""

    def __init__(
        self,
        *,
        crm: CrmPort,
        erp: ErpPort,
        rules: RuleBook,
        integration: Integration,
        catalog: Catalog,
        ownership: ObjectOwnership,
        qualify: frozenset[customers.Qualify],
        master_data_ttl_s: float = 60.0,
        concurrency: int = 8,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``concurrency``: how many orders (never two of one order) are in flight at once;
        every call is to the CRM or the ERP, so threads overlap their waiting. ``ownership``
        and ``qualify``: the customer fields and the rule customer_sync masters accounts by,
        so an order of an account it never will is rejected rather than kept waiting."""
        self.crm = crm
        self.ownership = ownership
        self.qualify = qualify
        self.erp = erp
        self.rules = rules
        self.integration = integration
        self.clock = clock
        self.topics = output_topics(catalog, OUTPUTS)
        # Master data changes rarely; an order needs it at once. Cached briefly, per item.
        self._accounts: TtlCache[str, str | None] = TtlCache(master_data_ttl_s)
        self._customers: TtlCache[str, Customer | None] = TtlCache(master_data_ttl_s)
        self._price_books: TtlCache[str, PriceBook | None] = TtlCache(master_data_ttl_s)
        self._products: TtlCache[str, Product | None] = TtlCache(master_data_ttl_s)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="order-sync")

    def __call__(self, inbound: Inbound) -> Decision:
        decision: Decision = route(ROUTES, inbound)(self, inbound)
        return decision

    def handle_many(self, inbounds: Sequence[Inbound]) -> list[Decision | Exception]:
        return handle_concurrently(self, inbounds, self._pool)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # --- CRM change events -> canonical events ----------------------------------------------

    def capture(self, change: RecordChange) -> Decision:
        step = logic.plan(change, self.integration)
        if isinstance(step, logic.Ignore):
            return Decision()
        reconciling = isinstance(step, logic.Reconcile)
        if isinstance(step, logic.Reconcile):
            found = self.crm.query(logic.reconcile_query(step.since))
            record_ids: tuple[str, ...] = tuple(str(row["Id"]) for row in found)
            log.info("change overflow: reconciling %d orders", len(record_ids))
        else:
            record_ids = step.record_ids
        attempt = change.header.retry
        if len(record_ids) == 1 and not reconciling:
            return Decision(emits=self._capture_order(change.envelope, record_ids[0], attempt))
        # Many orders in one event: each on its own, so that one failing holds back only itself.
        emits: list[Emission] = []
        failed: list[FailedPart] = []
        for record_id in record_ids:
            try:
                emits += self._capture_order(change.envelope, record_id, attempt)
            except Exception as error:  # routed on as that order's own record
                log.warning("order %s of a merged change failed: %s", record_id, described(error))
                narrow = narrowed(change, record_id, refetch=reconciling)
                failed.append(FailedPart(record_id.encode(), narrow, error))
        return Decision(emits=emits, failed=failed)

    def _capture_order(
        self, cause: Envelope, record_id: str, attempt: str | None = None
    ) -> list[Emission]:
        try:
            order = self.crm.get(logic.ORDER, record_id, logic.ORDER_FIELDS)
        except RecordNotFound:
            # Deleted since the change: only drafts can be deleted, and drafts are not synced.
            log.warning("order %s changed but is no longer in the CRM; nothing to sync", record_id)
            return []
        status = order.get("Status")
        if status not in (logic.ACTIVATED, logic.CANCELLED):
            return []
        items = (
            self.crm.related(logic.ORDER, record_id, "OrderItems")
            if status == logic.ACTIVATED
            else []
        )
        try:
            event = logic.canonical(cause, order, items, self._erp_customer_id(order), attempt)
        except logic.InvalidCrmOrder as error:
            rejection = checks.Rejection(RejectionReason.INVALID_ORDER, str(error))
            identity = logic.attempted(f"{record_id}@{order.get('ActivatedDate')}", attempt)
            return [self._reject(cause, record_id, rejection, order, identity)]
        return [] if event is None else [self._emit(event)]

    def _erp_customer_id(self, order: dict[str, Any]) -> str | None:
        account_id = order.get("AccountId")
        if not account_id:
            return None
        return self._accounts.get_or_load(
            str(account_id),
            lambda: self.crm.get("Account", str(account_id), ["ERP_Customer_Id__c"]).get(
                "ERP_Customer_Id__c"
            ),
        )

    # --- canonical events -> the ERP, and the outcome back to the CRM ------------------------

    def place(self, order: OrderCreated) -> Decision:
        rules = self.rules.for_order(order.legal_entity, order.region)
        customer_id = order.erp_customer_id
        if customer_id is None:
            found = self._mastered_from(order.crm_account_id)
            if isinstance(found, checks.Rejection):
                return self._rejected(order, found)
            customer_id = found
            order = order.model_copy(update={"erp_customer_id": customer_id})
        customer = self._customers.get_or_load(customer_id, lambda: self.erp.customer(customer_id))
        price_book = self._price_books.get_or_load(
            order.price_book_id, lambda: self.erp.price_book(order.price_book_id)
        )
        products = self._products.get_or_load_many(
            (line.sku for line in order.lines), self.erp.products, None
        )
        known = {sku: product for sku, product in products.items() if product is not None}
        rejection = checks.validate(order, customer, known, price_book, rules)
        if rejection is None:
            try:
                sales_order = self.erp.create_sales_order(
                    logic.sales_order_request(order), logic.create_key(order)
                )
            except ErpRejected as refusal:
                rejection = checks.erp_rejection(refusal.code, refusal.message, refusal.skus)
            else:
                self._tell_crm(order, logic.crm_accepted_fields(sales_order))
                return Decision(
                    emits=[self._emit(logic.accepted(order, sales_order, self.clock()))]
                )
        return self._rejected(order, rejection)

    def _rejected(self, order: OrderCreated, rejection: checks.Rejection) -> Decision:
        self._tell_crm(order, logic.crm_rejected_fields(rejection))
        return Decision(
            emits=[
                self._emit(
                    logic.rejected(
                        order.envelope,
                        order.crm_order_id,
                        rejection,
                        order.legal_entity,
                        order.region,
                        self.clock(),
                    )
                )
            ]
        )

    def _mastered_from(self, crm_account_id: str) -> str | checks.Rejection:
        """The ERP customer mastered from an account that had none when its order was
        captured: asked every time, so a retry finds it as soon as it exists. While there is
        none, the order waits (:class:`CustomerNotMastered`) if customer_sync will master
        the account, and is rejected if it never will."""
        customer = self.erp.customer_by_account(crm_account_id)
        if customer is not None:
            self._customers.put(customer.id, customer)
            return customer.id
        never = self._never_mastered(crm_account_id)
        if never is not None:
            return checks.Rejection(RejectionReason.CUSTOMER_NOT_MASTERED, never)
        raise CustomerNotMastered(
            f"account {crm_account_id} has no ERP customer yet; the order waits until "
            "the customer is mastered"
        )

    def _never_mastered(self, account_id: str) -> str | None:
        """Why customer_sync will not master this account for its order, by the rule it
        masters by; None when it will."""
        fields = customers.account_fields(self.ownership)
        try:
            account = self.crm.get(customers.ACCOUNT, account_id, fields)
        except RecordNotFound:
            return f"account {account_id} is not in the CRM"
        if not customers.qualifies(account, self.qualify, by_order=True):
            return (
                f"account {account_id} has no ERP customer, and only accounts with "
                f"{customers.SYNC_FLAG} ticked are mastered"
            )
        try:
            customers.draft(account, self.ownership)
        except customers.AccountNotMasterable as why:
            return str(why)
        return None

    def _tell_crm(self, order: OrderCreated, fields: dict[str, Any]) -> None:
        """The outcome onto the CRM order; an order submitted through the process API (by a
        web shop or a partner portal) has none to tell."""
        if order.envelope.source_system is SourceSystem.CRM:
            self.crm.update(logic.ORDER, order.crm_order_id, fields)

    def cancel(self, cancelled: OrderCancelled) -> Decision:
        reason = cancelled.reason or "cancelled in the CRM"
        try:
            self.erp.cancel_sales_order(
                cancelled.crm_order_id,
                reason,
                logic.idempotency_key("cancel", cancelled.crm_order_id),
            )
        except ErpRejected as refusal:
            # The ERP has gone too far (invoiced, shipped): the CRM user must know it stands.
            message = f"not cancelled in the ERP ({refusal.code}): {refusal.message}"
            self.crm.update(
                logic.ORDER,
                cancelled.crm_order_id,
                {"ERP_Message__c": message[: logic.CRM_MESSAGE_LIMIT]},
            )
            return Decision()
        self.crm.update(logic.ORDER, cancelled.crm_order_id, logic.crm_cancelled_fields(reason))
        return Decision()

    # --- the ERP's customer master -> what is cached of it ------------------------------------

    def forget_customer(self, change: CustomerMastered | CreditStatusChanged) -> Decision:
        """A customer mastered, changed or moved on or off credit hold in the ERP: its next
        order reads it afresh (by its id, and by its account's)."""
        self._customers.discard(change.erp_customer_id)
        self._accounts.discard(change.crm_account_id)
        return Decision()

    # --- emissions ---------------------------------------------------------------------------

    def _reject(
        self,
        cause: Envelope,
        crm_order_id: str,
        rejection: checks.Rejection,
        order: dict[str, Any],
        identity: str,
    ) -> Emission:
        """A CRM order that cannot become an event: the compensating write-back to the CRM,
        then the rejection event."""
        self.crm.update(logic.ORDER, crm_order_id, logic.crm_rejected_fields(rejection))
        return self._emit(
            logic.rejected(
                cause,
                crm_order_id,
                rejection,
                order.get("Legal_Entity__c"),
                order.get("Region__c"),
                self.clock(),
                identity,
            )
        )

    def _emit(self, event: Event) -> Emission:
        return Emission(self.topics[type(event)], event)


ROUTES: dict[type[Inbound], Callable[[OrderSync, Any], Decision]] = {
    RecordChange: OrderSync.capture,
    OrderCreated: OrderSync.place,
    OrderCancelled: OrderSync.cancel,
    CustomerMastered: OrderSync.forget_customer,
    CreditStatusChanged: OrderSync.forget_customer,
}
"""What order-sync takes, and which step handles each."""


def build(context: Context) -> OrderSync:
    s = context.service
    handler = OrderSync(
        crm=context.crm(),
        erp=context.erp(),
        rules=RuleBook.load(s.order_rules),
        integration=Integration(s.crm_client_name, s.crm_integration_user_id),
        catalog=context.catalog,
        ownership=Ownership.load(context.settings.schemas_dir).customer,
        qualify=customers.parse_choices(s.customer_qualify, customers.Qualify),
        master_data_ttl_s=s.master_data_ttl_s,
        concurrency=s.handler_concurrency,
    )
    context.resources.callback(handler.close)
    return handler


DEPLOYABLE = ConsumerDeployable(
    name="order-sync", service="order_sync", inputs=tuple(ROUTES), outputs=OUTPUTS, build=build
)
