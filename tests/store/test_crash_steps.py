"""Flows that span hash slots are ordered steps: a crash after any step, then the recovery a
real sender or worker performs (the request retried, the next worker turn), loses nothing and
posts nothing twice. Run on standalone Redis and on a Redis Cluster."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from app.domain import LinkEvent
from app.store import keys, redis_store
from app.store.redis_store import ContactLink, RedisStore
from tests.conftest import make_product
from tests.store.helpers import T0, actions, claim, described

PRODUCT = make_product(post_link_debounce_s=0)


class SimulatedCrash(Exception):
    """The process died right after a step: nothing after it ran."""


class CrashAt:
    """An ``after_step`` hook that crashes once, at the named step, and records every step."""

    def __init__(self, step: str | None) -> None:
        self.step = step
        self.seen: list[str] = []

    async def __call__(self, step: str) -> None:
        self.seen.append(step)
        if step == self.step:
            self.step = None  # the restarted process runs on
            raise SimulatedCrash(step)


@pytest.fixture
def redis_client(
    topology_client: aioredis.Redis | aioredis.RedisCluster,
) -> aioredis.Redis | aioredis.RedisCluster:
    return topology_client


def store_for(client: aioredis.Redis | aioredis.RedisCluster, hook: CrashAt) -> RedisStore:
    return RedisStore(client, after_step=hook)


async def deliver_all(store: RedisStore, now: float) -> list[tuple[str, list[str]]]:
    """Claim and acknowledge until nothing is due: (kind, descriptions) per note."""
    posted = []
    while found := await claim(store, now, limit=50):
        for c in found:
            posted.append((c.source, described(c)))
            assert (await store.ack(c, PRODUCT, note_id="n", now=now)).acked
    return posted


async def crash_then(step: str | None, attempt: Callable[[], Awaitable[object]]) -> None:
    try:
        await attempt()
    except SimulatedCrash as crash:
        assert str(crash) == step
    else:
        assert step is None, f"the flow never reached {step}"


INGEST_STEPS = ["ingest.stored", "ingest.pending_read", "ingest.linked", "ingest.pending_forgotten"]


@pytest.mark.parametrize("step", INGEST_STEPS)
async def test_a_first_batch_that_crashes_after_any_step_links_once_when_retried(
    redis_client: aioredis.Redis, step: str
) -> None:
    """A webhook left conversation c1 waiting for contact u1; u1's first batch crashes after
    ``step`` (no 202), and the pipeline sends the same request again."""
    hook = CrashAt(step)
    store = store_for(redis_client, hook)
    waiting = await store.link_contact(
        PRODUCT, user_id="u1", email=None, conversation_id="c1", event=LinkEvent.NEW, now=T0
    )
    assert waiting.status == "pending"

    async def send() -> None:
        payloads = actions("s1", ("A", T0), user_id="u1")
        await store.ingest(PRODUCT, payloads, now=T0, replay_fields=[b"request-1"])

    await crash_then(step, send)
    await send()  # the sender's retry: a replay of step 1, then every later step again

    assert await deliver_all(store, T0 + 1) == [("pre", ["A"])]
    state = await store.session_state(PRODUCT, "s1", now=T0 + 1)
    assert state is not None and state.conversation_id == "c1"
    assert await redis_client.get(keys.pending_key("acme", user_id="u1")) is None
    assert await redis_client.get(keys.identity_key("acme", user_id="u1")) == b"s1"


WEBHOOK_STEPS = ["webhook.pending_written", "webhook.identity_read", "webhook.linked"]


@pytest.mark.parametrize("step", WEBHOOK_STEPS)
async def test_a_contact_webhook_that_crashes_after_any_step_links_once_when_redelivered(
    redis_client: aioredis.Redis, step: str
) -> None:
    """Session s1 of contact u1 is known; the platform's webhook for u1 crashes after
    ``step`` (no 200), and the platform delivers it again."""
    hook = CrashAt(step)
    store = store_for(redis_client, hook)
    await store.ingest(PRODUCT, actions("s1", ("A", T0), user_id="u1"), now=T0)

    def deliver_webhook() -> Awaitable[ContactLink]:
        return store.link_contact(
            PRODUCT,
            user_id="u1",
            email=None,
            conversation_id="c1",
            event=LinkEvent.NEW,
            now=T0,
            delivery_id="d1",
        )

    await crash_then(step, deliver_webhook)
    again = await deliver_webhook()  # the platform's redelivery
    assert again.status == "session" and again.link is not None
    # Only a crash before the link leaves the redelivery anything to apply.
    assert again.link.status == ("duplicate" if step == "webhook.linked" else "linked")
    assert await deliver_all(store, T0 + 1) == [("pre", ["A"])]
    assert await redis_client.get(keys.pending_key("acme", user_id="u1")) is None


class RunsAfterFirstStep:
    """An ``after_step`` hook that runs another flow to completion after the first step of
    the flow it is attached to, whatever that step is."""

    def __init__(self, flow: Callable[[], Awaitable[object]]) -> None:
        self.flow: Callable[[], Awaitable[object]] | None = flow

    async def __call__(self, step: str) -> None:
        flow, self.flow = self.flow, None
        if flow is not None:
            await flow()


@pytest.mark.parametrize("first", ["batch", "webhook"])
async def test_a_webhook_and_a_first_batch_racing_still_meet(
    redis_client: aioredis.Redis, first: str
) -> None:
    """The webhook writes its pending conversation before it reads the identity index, and
    the batch writes the index before it reads pending conversations: with the other flow run
    between those two steps of either, one of them sees the other's write."""
    plain = RedisStore(redis_client)

    async def webhook(store: RedisStore) -> None:
        await store.link_contact(
            PRODUCT, user_id="u1", email=None, conversation_id="c1", event=None, now=T0
        )

    async def first_batch(store: RedisStore) -> None:
        await store.ingest(PRODUCT, actions("s1", ("A", T0), user_id="u1"), now=T0)

    if first == "batch":  # the whole webhook runs after the batch's first step
        hook = RunsAfterFirstStep(lambda: webhook(plain))
        await first_batch(RedisStore(redis_client, after_step=hook))
    else:  # the whole batch runs after the webhook's first step
        hook = RunsAfterFirstStep(lambda: first_batch(plain))
        await webhook(RedisStore(redis_client, after_step=hook))
    state = await plain.session_state(PRODUCT, "s1", now=T0)
    assert state is not None and state.conversation_id == "c1"
    assert await deliver_all(plain, T0 + 1) == [("pre", ["A"])]
    assert await redis_client.get(keys.pending_key("acme", user_id="u1")) is None


DEAD_STEPS = ["dead.recorded", "dead.filed"]


@pytest.mark.parametrize("step", DEAD_STEPS)
async def test_a_dead_letter_interrupted_after_any_step_is_filed_exactly_once(
    redis_client: aioredis.Redis, step: str
) -> None:
    hook = CrashAt(step)
    store = store_for(redis_client, hook)
    await store.link(PRODUCT, session_id="s1", conversation_id="c1", event=None, now=T0)
    await store.ingest(PRODUCT, actions("s1", ("A", T0)), now=T0)
    (leased,) = await claim(store, T0 + 1)

    async def fail() -> None:
        await store.fail(leased, PRODUCT, mode="dead", error="400", retry_at=T0, now=T0 + 1)

    await crash_then(step, fail)
    # Recovery is the next worker turn: it files what the crash left and posts nothing.
    assert await claim(store, T0 + 2) == []
    letters = await store.dead_letters("acme")
    assert [[a["description"] for a in letter["actions"]] for letter in letters] == [["A"]]
    assert not await redis_client.exists(keys.session_keys("acme", "s1").dead)
    assert await store.next_due_at() is None
    assert await deliver_all(store, T0 + 100) == []


async def test_a_replay_of_dead_letters_interrupted_after_queueing_queues_them_once(
    redis_client: aioredis.Redis,
) -> None:
    hook = CrashAt("requeue.queued")
    store = store_for(redis_client, hook)
    await store.link(PRODUCT, session_id="s1", conversation_id="c1", event=None, now=T0)
    await store.ingest(PRODUCT, actions("s1", ("A", T0)), now=T0)
    (leased,) = await claim(store, T0 + 1)
    await store.fail(leased, PRODUCT, mode="dead", error="400", retry_at=T0, now=T0 + 1)

    await crash_then("requeue.queued", lambda: store.replay_dead_letters(PRODUCT, now=T0 + 2))
    assert await store.dead_letter_count("acme") == 1  # the crash came before it left the list
    assert await store.replay_dead_letters(PRODUCT, now=T0 + 3) == 1  # an operator tries again
    assert await store.dead_letter_count("acme") == 0
    assert await deliver_all(store, T0 + 4) == [("out", ["A"])]


def test_every_step_named_here_is_a_step_the_store_reports() -> None:
    """The crash points above are the store's own: a renamed step fails this test."""
    text = Path(redis_store.__file__).read_text(encoding="utf-8")
    for step in [*INGEST_STEPS, *WEBHOOK_STEPS, *DEAD_STEPS, "requeue.queued"]:
        assert f'await self._after_step("{step}")' in text, step
