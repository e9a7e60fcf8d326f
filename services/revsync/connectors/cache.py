"""A small time-to-live cache for master data read through the adapters (customers,
products, price books, accounts): it changes rarely, and every order needs it. An expired
value is still known, with its age, for a caller that would rather answer from it than not at
all while its source is unreachable."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Entries expire ``ttl_s`` after they were stored; misses (``None``) are cached too, so
    an unknown product is not asked for again with every order. Expired entries are dropped
    only when the cache is full. Safe across threads; ``clock`` in seconds, monotonic."""

    def __init__(
        self,
        ttl_s: float,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[K, tuple[float, float, V]] = {}
        """Key -> (stored at, expires at, value)."""
        self._lock = threading.Lock()

    def lookup(self, key: K) -> tuple[V] | None:
        """``(value,)`` while fresh, else None: one read, so a hit cannot expire half-way."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry[1] <= self._clock():
            return None
        return (entry[2],)

    def aged(self, key: K) -> tuple[V, float] | None:
        """The value last stored for ``key``, fresh or expired, and its age in seconds."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None
        return entry[2], self._clock() - entry[0]

    def put(self, key: K, value: V) -> None:
        now = self._clock()
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries = {k: e for k, e in self._entries.items() if e[1] > now}
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[key] = (now, now + self.ttl_s, value)

    def discard(self, key: K) -> None:
        """Forget ``key``: its source said it changed, so the next read asks it again."""
        with self._lock:
            self._entries.pop(key, None)

    def get_or_load(self, key: K, load: Callable[[], V]) -> V:
        hit = self.lookup(key)
        if hit is not None:
            return hit[0]
        value = load()
        self.put(key, value)
        return value

    def get_or_load_many(
        self, keys: Iterable[K], load: Callable[[list[K]], Mapping[K, V]], absent: V
    ) -> dict[K, V]:
        """Every key's value: the fresh ones from the cache, the others with one ``load`` of
        them all, where a key it does not answer for is ``absent`` (and cached as such)."""
        values: dict[K, V] = {}
        missing = []
        for key in dict.fromkeys(keys):
            hit = self.lookup(key)
            if hit is None:
                missing.append(key)
            else:
                values[key] = hit[0]
        if missing:
            found = load(missing)
            for key in missing:
                values[key] = found.get(key, absent)
                self.put(key, values[key])
        return values
