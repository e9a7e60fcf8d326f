"""A small time-to-live cache for master data read through the adapters (customers,
products, price books, accounts): it changes rarely, and every order needs it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Entries expire ``ttl_s`` after they were stored; misses (``None``) are cached too, so
    an unknown product is not asked for again with every order. Safe across threads."""

    def __init__(self, ttl_s: float, max_entries: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def lookup(self, key: K) -> tuple[V] | None:
        """``(value,)`` while fresh, else None: one read, so a hit cannot expire half-way."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return (entry[1],)

    def put(self, key: K, value: V) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[key] = (now + self.ttl_s, value)

    def get_or_load(self, key: K, load: Callable[[], V]) -> V:
        hit = self.lookup(key)
        if hit is not None:
            return hit[0]
        value = load()
        self.put(key, value)
        return value
