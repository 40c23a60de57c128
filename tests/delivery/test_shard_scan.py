"""Which due queues a worker reads: the shards local work went to, and every shard once per poll
interval (to find work other replicas scheduled), never all 64 on every turn."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from app.delivery.worker import DeliveryWorker
from app.store import keys
from app.store.redis_store import DueSessions, RedisStore
from tests.conftest import ManualClock, make_product
from tests.store.helpers import actions

POLL_S = 1.0


class LookingStore(RedisStore):
    """The real store, recording which shards each claim looked at (None: all of them)."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.looked: list[list[int] | None] = []

    async def due_sessions(self, **kwargs: Any) -> DueSessions:
        shards = kwargs.get("shards")
        self.looked.append(None if shards is None else sorted(shards))
        return await super().due_sessions(**kwargs)


def worker_for(store: RedisStore, clock: ManualClock) -> DeliveryWorker:
    # No products: a claimed note stays leased, which is all these tests look at.
    return DeliveryWorker(
        store=store, products={}, platforms={}, clock=clock, poll_s=POLL_S, concurrency=8
    )


async def test_a_turn_reads_only_the_shards_with_known_work(
    redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    store = LookingStore(redis_client)
    worker = worker_for(store, clock)

    await worker._step()  # the first turn knows nothing yet: it reads every shard
    assert store.looked == [None]

    shard = keys.shard_of("acme", "s9")
    worker.notify(clock.now() + 0.15, shard)  # what an ingest in this process does
    await worker._step()
    assert len(store.looked) == 1  # not due yet: no read
    clock.advance(0.2)
    await worker._step()  # due now, in one shard: only that shard is read
    assert store.looked[-1] == [shard]

    await worker._step()  # nothing known to be due, the sweep not due yet: no read
    assert len(store.looked) == 2
    clock.advance(POLL_S)
    await worker._step()  # a poll interval later every shard is read again
    assert store.looked[-1] is None


async def test_work_another_replica_scheduled_is_found_by_the_next_sweep(
    redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    product = make_product(post_link_debounce_s=0)
    store = LookingStore(redis_client)
    worker = worker_for(store, clock)
    await worker._step()  # the first sweep: nothing is due anywhere

    other_replica = RedisStore(redis_client)
    now = clock.now()
    await other_replica.ingest(product, actions("s1", ("A", now), received_at=now), now=now)
    await other_replica.link(product, session_id="s1", conversation_id="c1", event=None, now=now)

    await worker._step()  # this process was not told: it does not look yet
    assert len(store.looked) == 1
    clock.advance(POLL_S)
    await worker._step()
    await asyncio.gather(*worker._in_flight)
    assert store.looked[-1] is None
    view = await store.session_view("acme", "s1")
    assert view is not None and "lease" in view["state"]  # the sweep found and claimed it


class NotifiedWhileReading(LookingStore):
    """An ingest in this process tells the worker about new work while it reads the queues."""

    worker: DeliveryWorker
    shard: int
    armed = False

    async def due_sessions(self, **kwargs: Any) -> DueSessions:
        found = await super().due_sessions(**kwargs)
        if self.armed:  # lands before the read's answer is used
            self.worker.notify(kwargs["now"], self.shard)
        return found


async def test_work_notified_while_the_queues_are_read_is_not_forgotten(
    redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    store = NotifiedWhileReading(redis_client)
    store.worker = worker = worker_for(store, clock)
    store.shard = keys.shard_of("acme", "s1")
    await worker._step()  # a first sweep: nothing is due anywhere
    clock.advance(POLL_S)
    store.armed = True
    await worker._step()  # the next sweep finds nothing either, but a notice came in meanwhile
    store.armed = False
    await worker._step()
    assert store.looked[-1] == [store.shard]  # the next turn looks at that shard at once
