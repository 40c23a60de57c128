"""What every adapter shares: the expiring lookup cache."""

from __future__ import annotations

from app.platforms.base import ExpiringCache


def test_the_cache_evicts_the_least_recently_used_entry() -> None:
    cache: ExpiringCache[str, str] = ExpiringCache(max_entries=2, ttl_s=60)
    cache.put("1", "a", now=0)
    cache.put("2", "b", now=0)
    assert cache.get("1", now=1) == "a"  # "2" is now the least recently used
    cache.put("3", "c", now=1)
    assert len(cache) == 2
    assert cache.get("2", now=1) is None
    assert (cache.get("1", now=1), cache.get("3", now=1)) == ("a", "c")


def test_cache_entries_expire_ttl_after_they_were_stored() -> None:
    cache: ExpiringCache[str, str] = ExpiringCache(max_entries=2, ttl_s=60)
    cache.put("1", "a", now=0)
    assert cache.get("1", now=59.9) == "a"
    assert cache.get("1", now=60) is None
    assert len(cache) == 0


def test_storing_again_restarts_the_entrys_lifetime() -> None:
    cache: ExpiringCache[str, str] = ExpiringCache(max_entries=2, ttl_s=60)
    cache.put("1", "a", now=0)
    cache.put("1", "b", now=50)
    assert cache.get("1", now=100) == "b"
    assert len(cache) == 1
