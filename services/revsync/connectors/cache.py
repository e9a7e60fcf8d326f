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
    an unknown product is not asked for again with every order."""

    def __init__(self, ttl_s: float, max_entries: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def has(self, key: K) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry[0] > time.monotonic()

    def get(self, key: K) -> V:
        """The fresh value for ``key``; KeyError if absent or expired."""
        with self._lock:
            expires, value = self._entries[key]
        if expires <= time.monotonic():
            raise KeyError(key)
        return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + self.ttl_s, value)

    def get_or_load(self, key: K, load: Callable[[], V]) -> V:
        if self.has(key):
            return self.get(key)
        value = load()
        self.put(key, value)
        return value
