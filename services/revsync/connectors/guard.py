"""Reads of an external system for callers that answer a person synchronously (the process
API): a circuit breaker stops calling a system that keeps failing, and the reads' caches answer
meanwhile, each answer saying whether it is stale and how old it is.

The breaker trips as the consumers' dead-letter breaker does (:class:`TripRule`): a run of
failed calls, or too large a share of the latest. Open, it lets no call through for its
cool-down; then one probe call, whose success closes it and whose failure opens it again.
Only a :class:`~revsync.errors.TransientError` is a failed call: a system that answers, even
"no such customer", is up.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import Counter, Gauge

from revsync.connectors.cache import TtlCache
from revsync.errors import TransientError, described
from revsync.runtime.breaker import TripRule

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")

READS = Counter(
    "revsync_guarded_reads_total",
    "Values read through a guard: hit (fresh in the cache), miss (asked of the system), "
    "stale (the system failing or its breaker open: the last value known) or unavailable.",
    ["system", "read", "outcome"],
)
BREAKER_OPEN = Gauge(
    "revsync_call_breaker_open", "1 while the breaker around a system's calls is open.", ["system"]
)


class Unavailable(TransientError):
    """The system cannot be asked (it fails, or its breaker is open) and what was asked is not
    cached, or too long ago; ``retry_after``: when the breaker lets a call through again."""


class _Refused(Exception):
    """A call the breaker did not let through, or that failed."""


class CallBreaker:
    """The breaker around one system's calls; ``clock`` in seconds, monotonic. Safe across
    threads: while it is half-open, one call at a time is the probe."""

    def __init__(
        self,
        system: str,
        rule: TripRule,
        cool_down_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.system = system
        self.cool_down_s = cool_down_s
        self._rule = rule
        self._clock = clock
        self._opened_at: float | None = None
        self._probing = False
        self._lock = threading.Lock()
        self._gauge = BREAKER_OPEN.labels(system)
        self._gauge.set(0)

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allows(self) -> bool:
        """Whether a call may go now: always while closed; once open, one probe after the
        cool-down, none while the probe is out."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._probing or self._clock() - self._opened_at < self.cool_down_s:
                return False
            self._probing = True
            return True

    def retry_after_s(self) -> float:
        """Seconds until a call may go (0 while closed)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(self.cool_down_s - (self._clock() - self._opened_at), 0.0)

    def succeeded(self) -> None:
        with self._lock:
            if self._opened_at is not None:
                log.warning("%s answers again; its circuit breaker is closed", self.system)
                self._opened_at = None
                self._probing = False
                self._rule.reset()
                self._gauge.set(0)
                return
            self._rule.observe(False)

    def failed(self, error: BaseException) -> None:
        with self._lock:
            if self._opened_at is not None:
                self._opened_at = self._clock()  # the probe failed: another cool-down
                self._probing = False
                return
            tripped = self._rule.observe(True)
            if tripped is not None:
                self._opened_at = self._clock()
                self._gauge.set(1)
                log.error(
                    "%s circuit breaker open for %gs: %s (last: %s)",
                    self.system,
                    self.cool_down_s,
                    tripped,
                    described(error),
                )


@dataclass(frozen=True)
class Freshness:
    """How current an answer is: ``stale`` when it rests on a value past its time to live
    (the system could not be asked), ``age_s`` the age of the oldest value it rests on."""

    stale: bool
    age_s: float

    def __or__(self, other: Freshness) -> Freshness:
        """The freshness of an answer resting on both."""
        return Freshness(self.stale or other.stale, max(self.age_s, other.age_s))


class GuardedReads:
    """Reads of one system through its breaker and the callers' caches; a value past its
    time to live is still answered, as stale, for up to ``stale_for_s``."""

    def __init__(self, breaker: CallBreaker, stale_for_s: float) -> None:
        self.breaker = breaker
        self.stale_for_s = stale_for_s

    def one(
        self, read: str, cache: TtlCache[K, V], key: K, load: Callable[[], V]
    ) -> tuple[V, Freshness]:
        """``key``'s value (``read`` names what it is, for the metrics and messages)."""
        asked: list[K] = []

        def fetch() -> V:
            asked.append(key)
            return self._call(load)

        values, freshness = self._guarded(
            read, cache, [key], lambda: {key: cache.get_or_load(key, fetch)}, asked
        )
        return values[key], freshness

    def many(
        self,
        read: str,
        cache: TtlCache[K, V],
        keys: Iterable[K],
        load: Callable[[list[K]], Mapping[K, V]],
        absent: V,
    ) -> tuple[dict[K, V], Freshness]:
        """Every key's value: fresh ones from the cache, the others with one ``load`` (a key
        it does not answer for is ``absent``)."""
        wanted = list(dict.fromkeys(keys))
        asked: list[K] = []

        def fetch(missing: list[K]) -> Mapping[K, V]:
            asked.extend(missing)
            return self._call(lambda: load(missing))

        return self._guarded(
            read, cache, wanted, lambda: cache.get_or_load_many(wanted, fetch, absent), asked
        )

    def _guarded(
        self,
        read: str,
        cache: TtlCache[K, V],
        keys: list[K],
        fetch: Callable[[], dict[K, V]],
        asked: list[K],
    ) -> tuple[dict[K, V], Freshness]:
        """``fetch`` the keys' values; while the system cannot be asked, the last ones known."""
        try:
            values = fetch()
        except _Refused:
            return self._last_known(read, cache, keys)
        system = self.breaker.system
        READS.labels(system, read, "hit").inc(len(keys) - len(asked))
        READS.labels(system, read, "miss").inc(len(asked))
        ages = [found[1] for found in map(cache.aged, keys) if found is not None]
        return values, Freshness(stale=False, age_s=max(ages, default=0.0))

    def _call(self, load: Callable[[], T]) -> T:
        if not self.breaker.allows():
            raise _Refused
        try:
            found = load()
        except TransientError as error:
            self.breaker.failed(error)
            raise _Refused from error
        self.breaker.succeeded()
        return found

    def _last_known(
        self, read: str, cache: TtlCache[K, V], keys: list[K]
    ) -> tuple[dict[K, V], Freshness]:
        system = self.breaker.system
        values: dict[K, V] = {}
        oldest = 0.0
        for key in keys:
            found = cache.aged(key)
            if found is None or found[1] > self.stale_for_s:
                READS.labels(system, read, "unavailable").inc()
                retry = self.breaker.retry_after_s()
                raise Unavailable(
                    f"{system} cannot be asked now and {read} {key} is not cached",
                    retry_after=math.ceil(retry) if retry else None,
                )
            values[key], oldest = found[0], max(oldest, found[1])
        READS.labels(system, read, "stale").inc(len(keys))
        return values, Freshness(stale=True, age_s=oldest)
