"""The worker's capacity: a delivery that ends frees its slot for the next due note at once,
not at the next poll."""

from __future__ import annotations

import asyncio

from app.delivery.worker import DeliveryWorker
from app.domain import Note
from app.store.redis_store import RedisStore
from tests.conftest import ManualClock, make_product
from tests.store.helpers import T0, actions

POLL_S = 30.0  # far longer than the test: only a wake-up can start the second note in time


class SlowPlatform:
    """Holds the first note until released; records when each post started."""

    redacts = False

    def __init__(self) -> None:
        self.started: list[tuple[str, float]] = []
        self.release = asyncio.Event()
        self.second = asyncio.Event()

    async def post_note(self, note: Note) -> str:
        self.started.append((note.session_id or "", asyncio.get_running_loop().time()))
        if len(self.started) == 1:
            await self.release.wait()
        else:
            self.second.set()
        return f"n{len(self.started)}"


async def test_a_freed_slot_takes_the_next_due_note_at_once(
    store: RedisStore, clock: ManualClock
) -> None:
    product = make_product(post_link_debounce_s=0)
    for session_id in ("s1", "s2"):  # linked by the batch: each has its flush note due now
        batch = actions(session_id, ("A", T0), conversation_id=f"c-{session_id}")
        await store.ingest(product, batch, now=T0)
    platform = SlowPlatform()
    worker = DeliveryWorker(
        store=store,
        products={"acme": product},
        platforms={"acme": platform},  # type: ignore[dict-item]
        clock=clock,
        poll_s=POLL_S,
        concurrency=1,
    )
    running = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(5):
            while not platform.started:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        assert len(platform.started) == 1  # one slot: the second note waits
        released_at = asyncio.get_running_loop().time()
        platform.release.set()
        async with asyncio.timeout(5):
            await platform.second.wait()
        assert platform.started[1][1] - released_at < 1.0
        assert {s for s, _ in platform.started} == {"s1", "s2"}
    finally:
        worker.stop(0)
        async with asyncio.timeout(5):
            await running
