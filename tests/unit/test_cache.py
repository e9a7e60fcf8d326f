"""The master-data cache: values and misses served until they expire, bounded in size; an
expired value still known with its age, a key forgotten on demand, many keys loaded at once."""

from __future__ import annotations

import time

from revsync.connectors.cache import TtlCache


def test_a_cached_value_is_served_until_it_expires() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl_s=0.2)
    cache.put("SKU-1", 10)

    assert cache.lookup("SKU-1") == (10,)
    time.sleep(0.3)
    assert cache.lookup("SKU-1") is None


def test_an_absent_key_is_not_cached() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl_s=60)

    assert cache.lookup("SKU-1") is None


def test_a_miss_is_cached_too() -> None:
    cache: TtlCache[str, str | None] = TtlCache(ttl_s=60)
    loads: list[str] = []

    def load() -> str | None:
        loads.append("SKU-404")
        return None

    first = cache.get_or_load("SKU-404", load)
    second = cache.get_or_load("SKU-404", load)

    assert (first, second) == (None, None)
    assert loads == ["SKU-404"]
    assert cache.lookup("SKU-404") == (None,)


def test_an_expired_value_is_loaded_again() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl_s=0.1)
    values = iter([1, 2])

    assert cache.get_or_load("C-1", lambda: next(values)) == 1
    assert cache.get_or_load("C-1", lambda: next(values)) == 1
    time.sleep(0.2)
    assert cache.get_or_load("C-1", lambda: next(values)) == 2


def test_a_put_replaces_the_value_and_its_expiry() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl_s=0.3)
    cache.put("C-1", 1)
    time.sleep(0.2)
    cache.put("C-1", 2)
    time.sleep(0.2)

    assert cache.lookup("C-1") == (2,)


def test_a_zero_ttl_caches_nothing() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl_s=0)
    loads: list[int] = []

    def load() -> int:
        loads.append(len(loads) + 1)
        return len(loads)

    values = [cache.get_or_load("C-1", load) for _ in range(3)]

    assert values == [1, 2, 3]
    assert cache.lookup("C-1") is None


def test_a_full_cache_starts_over_rather_than_growing() -> None:
    cache: TtlCache[int, int] = TtlCache(ttl_s=60, max_entries=3)
    for key in range(3):
        cache.put(key, key)

    cache.put(3, 3)

    assert [cache.lookup(key) for key in range(4)] == [None, None, None, (3,)]


def test_a_full_cache_drops_its_expired_entries_first() -> None:
    cache: TtlCache[int, int] = TtlCache(ttl_s=0.1, max_entries=3)
    cache.put(0, 0)
    cache.put(1, 1)
    time.sleep(0.2)
    cache.ttl_s = 60
    cache.put(2, 2)

    cache.put(3, 3)

    assert [cache.lookup(key) for key in range(4)] == [None, None, (2,), (3,)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_expired_value_is_still_known_with_its_age() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(ttl_s=60, clock=clock)
    cache.put("SKU-1", 10)
    clock.now += 75

    assert cache.lookup("SKU-1") is None
    assert cache.aged("SKU-1") == (10, 75.0)
    assert cache.aged("SKU-2") is None


def test_a_discarded_key_is_loaded_again() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl_s=60)
    values = iter([1, 2])
    cache.get_or_load("C-1", lambda: next(values))

    cache.discard("C-1")
    cache.discard("C-404")

    assert cache.aged("C-1") is None
    assert cache.get_or_load("C-1", lambda: next(values)) == 2


def test_many_keys_are_loaded_at_once_and_absent_ones_cached_as_such() -> None:
    cache: TtlCache[str, int | None] = TtlCache(ttl_s=60)
    cache.put("SKU-1", 1)
    loads: list[list[str]] = []

    def load(keys: list[str]) -> dict[str, int]:
        loads.append(keys)
        return {"SKU-2": 2}

    first = cache.get_or_load_many(["SKU-1", "SKU-2", "SKU-404", "SKU-2"], load, None)
    second = cache.get_or_load_many(["SKU-404", "SKU-2"], load, None)

    assert first == {"SKU-1": 1, "SKU-2": 2, "SKU-404": None}
    assert second == {"SKU-404": None, "SKU-2": 2}
    assert loads == [["SKU-2", "SKU-404"]]
