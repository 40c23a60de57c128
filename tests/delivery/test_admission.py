"""Which due sessions a worker starts: a product's shared note budget, its in-flight cap, its
circuit breaker; and that none of them holds back another product's notes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import REGISTRY

from app.delivery import admission
from app.delivery.admission import FAILURES_TO_OPEN, Admission
from app.delivery.worker import DeliveryWorker
from app.domain import Note
from app.platforms.base import RetryableDeliveryError
from app.products import ProductConfig
from app.store import keys
from app.store.redis_store import RedisStore
from tests.conftest import ManualClock, make_product
from tests.store.helpers import T0, actions


class Recording:
    """A platform that posts every note, or fails while ``failing``, or holds every note
    until ``release`` while ``hanging``; it records the notes and the calls in flight."""

    redacts = False

    def __init__(self, *, hanging: bool = False) -> None:
        self.notes: list[Note] = []
        self.failing = False
        self.hanging = hanging
        self.release = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0

    async def post_note(self, note: Note) -> str:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.hanging:
                await self.release.wait()
            if self.failing:
                raise RetryableDeliveryError("503 from the platform")
            self.notes.append(note)
            return f"n{len(self.notes)}"
        finally:
            self.in_flight -= 1


def worker_for(
    store: RedisStore,
    clock: ManualClock,
    platforms: dict[str, Recording],
    products: dict[str, ProductConfig],
    **kwargs: Any,
) -> DeliveryWorker:
    return DeliveryWorker(
        store=store,
        products=products,
        platforms=platforms,  # type: ignore[arg-type]
        clock=clock,
        rand=lambda: 0.5,
        **kwargs,
    )


async def flush_due(store: RedisStore, product: ProductConfig, *sessions: str, at: float) -> None:
    """Each session linked by its batch: its at-link flush note is due at ``at``."""
    for session_id in sessions:
        batch = actions(session_id, ("A", at), conversation_id=f"c-{session_id}", received_at=at)
        await store.ingest(product, batch, now=at)


def sample(name: str, product: str) -> float:
    return REGISTRY.get_sample_value(name, {"product": product}) or 0


async def due_at(store: RedisStore, product_id: str, session_id: str) -> float | None:
    view = await store.session_view(product_id, session_id)
    assert view is not None
    due: float | None = view["next_note_due_at"]
    return due


# --- the shared note budget ---


async def test_a_product_over_its_budget_posts_its_burst_and_holds_the_rest(
    store: RedisStore, clock: ManualClock
) -> None:
    clock.t = T0
    product = make_product("budget", max_notes_per_minute=60)  # a burst of 6, then 1 a second
    platform = Recording()
    sessions = [f"s{i}" for i in range(10)]
    await flush_due(store, product, *sessions, at=T0)
    worker = worker_for(store, clock, {"budget": platform}, {"budget": product})
    throttled = sample("bridge_notes_throttled_total", "budget")

    assert await worker.run_once() == 6
    assert len(platform.notes) == 6
    assert sample("bridge_notes_throttled_total", "budget") == throttled + 4
    held = sorted([await due_at(store, "budget", s) for s in sessions if s not in posted(platform)])
    assert held == pytest.approx([T0 + 1, T0 + 2, T0 + 3, T0 + 4])  # each at its turn

    assert await worker.run_once() == 0  # held, not failed: no attempt is counted
    view = await store.session_view("budget", next(iter(set(sessions) - posted(platform))))
    assert view is not None and "attempts" not in view["state"]
    for second in (1, 2, 3, 4):
        clock.t = T0 + second
        assert await worker.run_once() == 1
    assert posted(platform) == set(sessions)  # nothing lost


def posted(platform: Recording) -> set[str]:
    return {note.session_id for note in platform.notes}


class SlowFirstRead(RedisStore):
    """The real store, whose first read of the due queues answers a second later."""

    clock: ManualClock
    slow = True

    async def due_sessions(self, **kwargs: Any) -> Any:
        found = await super().due_sessions(**kwargs)
        if self.slow:
            self.slow = False
            self.clock.advance(1.0)
        return found


async def test_a_slow_read_of_the_due_queues_never_stretches_the_budget(
    redis_client: Any, clock: ManualClock
) -> None:
    """Found by the limits end-to-end test: notes granted with the time read before a slow
    due-queue read started a second later, and the next round, with the real time, was
    granted the room they had used: 14 notes started at once against a burst of 12."""
    store = SlowFirstRead(redis_client)
    await store.load_scripts()
    store.clock = clock
    clock.t = T0
    product = make_product("budget", max_notes_per_minute=120)  # burst 12, then 1 per 0.5 s
    await flush_due(store, product, *[f"s{i}" for i in range(30)], at=T0)
    started: list[float] = []

    class Timed(Recording):
        async def post_note(self, note: Note) -> str:
            started.append(clock.now())
            return await super().post_note(note)

    worker = worker_for(store, clock, {"budget": Timed()}, {"budget": product})
    await worker.run_once()  # the read answers at T0 + 1
    await worker.run_once()
    assert started.count(T0 + 1) <= 12


async def test_a_held_session_keeps_collecting_actions_for_its_next_note(
    store: RedisStore, clock: ManualClock
) -> None:
    clock.t = T0
    product = make_product("budget", max_notes_per_minute=10, post_link_debounce_s=0)  # burst 1
    platform = Recording()
    worker = worker_for(store, clock, {"budget": platform}, {"budget": product})
    await flush_due(store, product, "s1", "s2", at=T0)
    assert await worker.run_once() == 1  # the burst of one: s2 waits its turn, 6 s on
    (first,) = platform.notes
    waiting = "s2" if first.session_id == "s1" else "s1"
    for n, at in enumerate((T0 + 1, T0 + 2, T0 + 3)):
        batch = actions(waiting, (f"B{n}", at), received_at=at)
        await store.ingest(product, batch, now=at)
        clock.t = at
        assert await worker.run_once() == 0
    assert await due_at(store, "budget", waiting) == pytest.approx(T0 + 6)
    clock.t = T0 + 6
    assert await worker.run_once() == 1
    # The flush posted first; the actions that came while it waited are the next note's.
    assert [a["description"] for a in platform.notes[1].actions] == ["A"]
    clock.t = T0 + 12
    assert await worker.run_once() == 1
    assert [a["description"] for a in platform.notes[2].actions] == ["B0", "B1", "B2"]


async def test_a_product_without_a_budget_is_never_held(
    store: RedisStore, clock: ManualClock
) -> None:
    clock.t = T0
    product = make_product("free", max_notes_per_minute=0, max_notes_in_flight=64)
    platform = Recording()
    await flush_due(store, product, *[f"s{i}" for i in range(40)], at=T0)
    worker = worker_for(store, clock, {"free": platform}, {"free": product}, concurrency=64)
    assert await worker.run_once() == 40


def test_the_platforms_default_budgets() -> None:
    intercom = make_product(
        platform="intercom",
        intercom={"access_token": "t" * 20, "admin_id": "1", "client_secret": "s" * 20},
    )
    assert intercom.note_budget is not None and intercom.note_budget.per_minute == 1000
    assert make_product(platform="http").note_budget is None
    assert make_product(max_notes_per_minute=30).note_budget.per_minute == 30  # type: ignore[union-attr]


# --- the in-flight cap: one slow product never takes the others' capacity ---


async def test_a_hanging_product_keeps_to_its_cap_and_the_others_are_posted(
    store: RedisStore, clock: ManualClock
) -> None:
    clock.t = T0
    slow = make_product("slow", max_notes_in_flight=2)
    fast = make_product("fast")
    hanging, quick = Recording(hanging=True), Recording()
    # The slow product's notes are due first: without a cap they would take every slot.
    await flush_due(store, slow, *[f"s{i}" for i in range(8)], at=T0 - 1)
    await flush_due(store, fast, "f1", "f2", "f3", at=T0)
    worker = worker_for(
        store,
        clock,
        {"slow": hanging, "fast": quick},
        {"slow": slow, "fast": fast},
        concurrency=4,
        poll_s=30.0,
    )
    running = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(5):
            while len(quick.notes) < 3:
                await asyncio.sleep(0.01)
        assert hanging.in_flight == 2 and hanging.most_in_flight == 2
        assert posted(quick) == {"f1", "f2", "f3"}
        hanging.release.set()
        async with asyncio.timeout(10):
            while len(hanging.notes) < 8:
                clock.advance(0.2)  # the sessions held back while capped come due again
                await asyncio.sleep(0.02)
        assert hanging.most_in_flight == 2
    finally:
        hanging.release.set()
        worker.stop(0)
        async with asyncio.timeout(5):
            await running


def test_a_capped_products_sessions_stay_due_untouched_and_the_others_start() -> None:
    """No write for a capped product's due sessions (a backlog of thousands would otherwise
    be rewritten on every look): they wait at the head of their queues for its next slot."""
    slow = make_product("slow", max_notes_in_flight=2)
    fast = make_product("fast")
    board = Admission({"slow": slow, "fast": fast})
    board.started("slow")
    board.started("slow")
    due = [(n, keys.due_member("slow", f"s{n}").encode()) for n in range(5)]
    due.append((9, keys.due_member("fast", "f1").encode()))
    plan = board.plan(due, capacity=10, now=T0)
    assert plan.start == [due[-1]]
    assert plan.hold == []
    assert plan.waiting == {"slow": {0, 1, 2, 3, 4}}


def test_the_workers_own_capacity_leaves_the_rest_due() -> None:
    board = Admission({"acme": make_product()})
    due = [(n, keys.due_member("acme", f"s{n}").encode()) for n in range(4)]
    plan = board.plan(due, capacity=2, now=T0)
    assert plan.start == due[:2]
    assert plan.busy == {2, 3}
    assert plan.hold == []


# --- the circuit breaker ---


def test_the_circuit_opens_after_five_consecutive_retryable_failures() -> None:
    board = Admission({"acme": make_product()})
    for n in range(FAILURES_TO_OPEN - 1):
        board.started("acme")
        board.finished("acme", "retryable", retry_at=T0 + n)
    assert board.circuit("acme").state(T0) == "closed"
    board.started("acme")
    board.finished("acme", "posted", retry_at=None)  # a success resets the count
    for _ in range(FAILURES_TO_OPEN - 1):
        board.started("acme")
        board.finished("acme", "retryable", retry_at=T0 + 30)
    assert board.circuit("acme").state(T0) == "closed"
    board.started("acme")
    board.finished("acme", "retryable", retry_at=T0 + 30)
    assert board.circuit("acme").state(T0) == "open"
    assert board.room("acme", T0 + 29) == 0
    assert REGISTRY.get_sample_value("bridge_platform_circuit_open", {"product": "acme"}) == 1


def test_a_half_open_circuit_lets_one_probe_through() -> None:
    board = Admission({"acme": make_product()})
    board.circuits["acme"] = admission.Circuit(failures=5, open_until=T0)
    assert board.room("acme", T0) == 1
    board.started("acme")
    assert board.room("acme", T0) == 0  # the probe is out
    board.finished("acme", "retryable", retry_at=T0 + 60)  # it failed: open again
    assert board.circuit("acme").state(T0 + 1) == "open"
    assert board.room("acme", T0 + 60) == 1
    board.started("acme")
    board.finished("acme", "posted", retry_at=None)
    assert board.circuit("acme").state(T0 + 60) == "closed"
    assert board.room("acme", T0 + 60) == make_product().max_notes_in_flight
    assert REGISTRY.get_sample_value("bridge_platform_circuit_open", {"product": "acme"}) == 0


async def test_an_open_circuit_holds_new_notes_back_without_failing_them(
    store: RedisStore, clock: ManualClock
) -> None:
    clock.t = T0
    product = make_product("flaky")
    platform = Recording()
    platform.failing = True
    worker = worker_for(store, clock, {"flaky": platform}, {"flaky": product})
    await flush_due(store, product, *[f"s{i}" for i in range(FAILURES_TO_OPEN)], at=T0)
    assert await worker.run_once() == FAILURES_TO_OPEN  # all fail: the circuit opens
    circuit = worker.admission.circuit("flaky")
    assert circuit.open_until is not None and circuit.open_until > T0

    await flush_due(store, product, "late1", "late2", at=T0 + 0.1)
    clock.t = T0 + 0.1
    assert await worker.run_once() == 0
    for session_id in ("late1", "late2"):
        view = await store.session_view("flaky", session_id)
        assert view is not None and "attempts" not in view["state"]  # held, not failed
        assert view["next_note_due_at"] == pytest.approx(circuit.open_until)

    platform.failing = False
    clock.t = circuit.open_until
    assert await worker.run_once() == 1  # one probe
    assert worker.admission.circuit("flaky").state(clock.t) == "closed"
    assert await worker.run_once() == FAILURES_TO_OPEN + 1  # the rest, at once
    assert posted(platform) == {*(f"s{i}" for i in range(FAILURES_TO_OPEN)), "late1", "late2"}
