"""The shared note budget (GCRA in the store), driven with explicit times: its burst, its
steady rate, giving unused notes back, and the envelope it never leaves."""

from __future__ import annotations

import random

import pytest
import redis.asyncio as aioredis

from app.domain import NoteBudget
from app.store import keys
from app.store.redis_store import RedisStore

T0 = 1_700_000_000.0
PER_MINUTE_120 = NoteBudget.of(120)  # one note every 0.5 s, a burst of 12


async def take(store: RedisStore, wanted: int, at: float, budget: NoteBudget = PER_MINUTE_120):
    return (await store.take_notes({"acme": (wanted, budget)}, now=at))["acme"]


@pytest.mark.parametrize(
    ("per_minute", "burst", "interval_ms"),
    [(1, 1, 60_000), (9, 1, 60_000 / 9), (10, 1, 6000), (120, 12, 500), (1000, 100, 60)],
)
def test_the_burst_is_a_tenth_of_the_minute_and_at_least_one(
    per_minute: int, burst: int, interval_ms: float
) -> None:
    budget = NoteBudget.of(per_minute)
    assert (budget.burst, budget.interval_ms) == (burst, interval_ms)


async def test_a_quiet_product_may_start_its_burst_at_once(store: RedisStore) -> None:
    grant = await take(store, 20, T0)
    assert grant.granted == 12
    assert grant.next_free == pytest.approx(T0 + 0.5)


async def test_then_one_note_per_interval(store: RedisStore) -> None:
    await take(store, 12, T0)
    assert (await take(store, 5, T0 + 0.499)).granted == 0
    grant = await take(store, 5, T0 + 0.5)
    assert grant.granted == 1
    assert grant.next_free == pytest.approx(T0 + 1.0)
    assert (await take(store, 5, T0 + 2.0)).granted == 3  # 1.5 s refilled three


async def test_the_burst_comes_back_after_a_quiet_spell(store: RedisStore) -> None:
    await take(store, 12, T0)
    assert (await take(store, 20, T0 + 3.0)).granted == 6  # half the burst refilled
    assert (await take(store, 20, T0 + 100.0)).granted == 12


async def test_notes_given_back_can_be_taken_again(store: RedisStore) -> None:
    await take(store, 12, T0)
    await take(store, -4, T0)
    assert (await take(store, 12, T0)).granted == 4


async def test_giving_back_never_makes_more_than_the_burst(store: RedisStore) -> None:
    await take(store, 2, T0)
    await take(store, -50, T0)
    assert (await take(store, 50, T0)).granted == 12


async def test_each_product_has_its_own_budget(store: RedisStore) -> None:
    budgets = {"acme": (20, PER_MINUTE_120), "globex": (20, NoteBudget.of(60))}
    grants = await store.take_notes(budgets, now=T0)
    assert (grants["acme"].granted, grants["globex"].granted) == (12, 6)


async def test_the_budget_key_expires_once_full_again(
    store: RedisStore, redis_client: aioredis.Redis
) -> None:
    await take(store, 12, T0)
    ttl_ms = await redis_client.pttl(keys.limiter_key("acme"))
    assert 6000 < ttl_ms <= 7000  # 12 notes of 0.5 s ahead of the clock, plus a second


async def test_no_window_ever_holds_more_than_burst_plus_rate(store: RedisStore) -> None:
    """Takes at random times, as replicas would make them: in every window [a, b] the
    notes started are at most the burst plus (b - a) / interval (the store counts whole
    milliseconds: a window is allowed one more of them)."""
    rng = random.Random(7)
    starts: list[float] = []
    now = T0
    for _ in range(300):
        now += rng.choice([0.0, 0.01, 0.1, 0.3, 0.5, 1.2])
        grant = await take(store, rng.randint(1, 6), now)
        starts += [now] * grant.granted
    assert len(starts) > 200
    for i, first in enumerate(starts):
        for j in range(i, len(starts)):
            allowed = PER_MINUTE_120.burst + (starts[j] - first + 0.001) / 0.5
            assert j - i + 1 <= allowed, (first, starts[j], j - i + 1)
