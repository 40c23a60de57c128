"""The store's scripts directly: atomicity, leases, ordering, TTLs, on a real Redis."""

from __future__ import annotations

import asyncio
import contextlib

import fakeredis
import pytest
import redis.asyncio as aioredis

from app.domain import LinkEvent
from app.store import keys
from app.store.redis_store import RedisStore, StoreUnavailable
from tests.conftest import make_product
from tests.store.helpers import T0, actions, claim, described

PRODUCT = make_product()


@pytest.fixture
def redis_client(
    topology_client: aioredis.Redis | aioredis.RedisCluster,
) -> aioredis.Redis | aioredis.RedisCluster:
    """Every test here runs on standalone Redis and on a Redis Cluster."""
    return topology_client


async def test_actions_arriving_while_a_note_is_in_flight_go_into_the_next_note(
    store: RedisStore,
) -> None:
    await store.link(PRODUCT, session_id="s1", conversation_id="c1", event=None, now=T0)
    await store.ingest(PRODUCT, actions("s1", ("A", T0)), now=T0)
    (first,) = await claim(store, T0 + 0.2)
    await store.ingest(PRODUCT, actions("s1", ("B", T0 + 1)), now=T0 + 0.25)
    assert await claim(store, T0 + 0.5) == []  # one note in flight per session
    assert (await store.ack(first, PRODUCT, note_id="n1", now=T0 + 0.3)).acked
    (second,) = await claim(store, T0 + 0.5)
    assert described(first) == ["A"]
    assert described(second) == ["B"]


async def test_concurrent_claims_hand_a_session_to_exactly_one_caller(store: RedisStore) -> None:
    for i in range(20):
        await store.link(PRODUCT, session_id=f"s{i}", conversation_id=f"c{i}", event=None, now=T0)
        await store.ingest(PRODUCT, actions(f"s{i}", ("A", T0)), now=T0)
    results = await asyncio.gather(*(claim(store, T0 + 1, limit=7) for _ in range(5)))
    claimed = [c.session_id for batch_ in results for c in batch_]
    assert len(claimed) == len(set(claimed)) >= 7  # racing callers never share a session
    # What the race left behind is still due, and handed out once.
    claimed += [c.session_id for c in await claim(store, T0 + 1, limit=20)]
    assert sorted(claimed) == sorted(f"s{i}" for i in range(20))


async def test_an_ack_after_the_lease_moved_on_changes_nothing(store: RedisStore) -> None:
    await store.link(PRODUCT, session_id="s1", conversation_id="c1", event=None, now=T0)
    await store.ingest(PRODUCT, actions("s1", ("A", T0)), now=T0)
    (stale,) = await claim(store, T0 + 1)
    (fresh,) = await claim(store, T0 + 32)  # the first holder's lease ran out
    assert described(fresh) == ["A"]
    assert not (await store.ack(stale, PRODUCT, note_id="late", now=T0 + 33)).acked
    assert (await store.ack(fresh, PRODUCT, note_id="n", now=T0 + 33)).acked
    assert await claim(store, T0 + 100) == []


async def test_new_overwrites_and_reply_existing_keeps_the_link(store: RedisStore) -> None:
    first = await store.link(
        PRODUCT, session_id="s1", conversation_id="c1", event=LinkEvent.REPLY_EXISTING, now=T0
    )
    assert first.linked and first.conversation_id == "c1"
    reply = await store.link(
        PRODUCT, session_id="s1", conversation_id="c2", event=LinkEvent.REPLY_EXISTING, now=T0
    )
    assert not reply.linked and reply.conversation_id == "c1"
    again = await store.link(
        PRODUCT, session_id="s1", conversation_id="c1", event=LinkEvent.NEW, now=T0
    )
    assert not again.linked
    moved = await store.link(
        PRODUCT, session_id="s1", conversation_id="c3", event=LinkEvent.NEW, now=T0
    )
    assert moved.linked and moved.previous_conversation_id == "c1"


async def test_repeating_a_link_does_not_disturb_a_pending_debounce(store: RedisStore) -> None:
    await store.link(PRODUCT, session_id="s1", conversation_id="c1", event=None, now=T0)
    await store.ingest(PRODUCT, actions("s1", ("A", T0)), now=T0)
    before = await store.next_due_at()
    await store.link(PRODUCT, session_id="s1", conversation_id="c1", event=None, now=T0 + 0.1)
    assert await store.next_due_at() == before == pytest.approx(T0 + 0.15)


async def test_every_key_has_a_ttl_except_the_due_queue(
    store: RedisStore, redis_client: aioredis.Redis
) -> None:
    await store.ingest(PRODUCT, actions("s1", ("A", T0), user_id="u1", email="a@b.c"), now=T0)
    await store.link_contact(
        PRODUCT,
        user_id="u2",
        email="x@y.z",
        conversation_id="c2",
        event=LinkEvent.NEW,
        now=T0,
        delivery_id="msg-0",
    )
    await store.link(
        PRODUCT, session_id="s1", conversation_id="c1", event=None, now=T0, delivery_id="msg-1"
    )
    (c,) = await claim(store, T0)
    await store.ack(c, PRODUCT, note_id="n1", now=T0)
    await store.ingest(PRODUCT, actions("s1", ("B", T0 + 1)), now=T0 + 1)
    (c,) = await claim(store, T0 + 2)
    await store.fail(c, PRODUCT, mode="dead", error="x", retry_at=T0 + 2, now=T0 + 2)
    names = [k.decode() async for k in redis_client.scan_iter("*")]
    assert len(names) >= 8
    for name in names:
        if not name.endswith(":due"):
            assert await redis_client.ttl(name) > 0, name


async def test_unlinked_buffer_expires_after_30_minutes(
    store: RedisStore, redis_client: aioredis.Redis
) -> None:
    await store.ingest(PRODUCT, actions("s1", ("A", T0)), now=T0)
    pre = keys.session_keys("acme", "s1").pre
    assert 0 < await redis_client.ttl(pre) <= keys.UNLINKED_BUFFER_TTL_S
    await store.link(PRODUCT, session_id="s1", conversation_id="c1", event=None, now=T0)
    assert await redis_client.ttl(pre) > keys.UNLINKED_BUFFER_TTL_S  # kept until flushed


async def test_scripts_are_reloaded_after_redis_forgets_them(
    store: RedisStore, redis_client: aioredis.Redis
) -> None:
    await redis_client.script_flush()
    (outcome,) = await store.ingest(PRODUCT, actions("s1", ("A", T0)), now=T0)
    assert outcome.accepted == 1


async def test_the_embedded_store_runs_the_same_scripts() -> None:
    embedded = RedisStore(fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer()))
    (outcome,) = await embedded.ingest(PRODUCT, actions("s1", ("A", T0), ("B", T0 + 1)), now=T0)
    assert outcome.accepted == 2
    linked = await embedded.link(PRODUCT, session_id="s1", conversation_id="c", event=None, now=T0)
    assert linked.linked
    (c,) = await claim(embedded, T0)
    assert c.source == "pre" and described(c) == ["A", "B"]
    assert (await embedded.ack(c, PRODUCT, note_id="n", now=T0)).acked
    assert await claim(embedded, T0 + 100) == []


async def test_a_webhook_delivery_is_recorded_with_the_link_it_makes(store: RedisStore) -> None:
    first = await store.link(
        PRODUCT, session_id="s1", conversation_id="c1", event=None, now=T0, delivery_id="d1"
    )
    moved = await store.link(
        PRODUCT, session_id="s1", conversation_id="c2", event=None, now=T0, delivery_id="d2"
    )
    replayed = await store.link(
        PRODUCT, session_id="s1", conversation_id="c1", event=None, now=T0, delivery_id="d1"
    )
    assert (first.status, moved.status, replayed.status) == ("linked", "linked", "duplicate")
    # The replay of the older delivery did not move the session back to c1.
    again = await store.link(PRODUCT, session_id="s1", conversation_id="c2", event=None, now=T0)
    assert again.status == "already_linked"


async def test_a_pending_link_records_its_delivery(store: RedisStore) -> None:
    args = {"user_id": "u9", "email": None, "conversation_id": "c9", "delivery_id": "d9"}
    first = await store.link_contact(PRODUCT, event=LinkEvent.NEW, now=T0, **args)
    second = await store.link_contact(PRODUCT, event=LinkEvent.NEW, now=T0, **args)
    assert (first.status, second.status) == ("pending", "duplicate")


async def test_a_write_that_no_replica_confirms_is_refused_but_the_worker_goes_on(
    redis_client: aioredis.Redis,
) -> None:
    """Neither test topology has replicas, so WAIT 1 is never satisfied: what answers a client
    is refused (the sender retries), while the worker's own writes go on unconfirmed."""
    plain = RedisStore(redis_client)
    waiting = RedisStore(redis_client, wait_replicas=1, wait_timeout_s=0.02)
    with pytest.raises(StoreUnavailable, match="0 of 1 replicas confirmed the write in time"):
        await waiting.ingest(PRODUCT, actions("s1", ("A", T0)), now=T0)
    with pytest.raises(StoreUnavailable):
        await waiting.link(PRODUCT, session_id="s1", conversation_id="c1", event=None, now=T0)
    # The refused writes did reach the primary (as they may under a real failover): their
    # retries are replays, and what they stored is delivered once.
    await plain.link(PRODUCT, session_id="s1", conversation_id="c1", event=None, now=T0)
    (c,) = await claim(waiting, T0 + 1)
    assert described(c) == ["A"]
    assert (await waiting.ack(c, PRODUCT, note_id="n1", now=T0 + 1)).acked
    assert await claim(plain, T0 + 100) == []


async def test_the_identity_index_names_the_session_that_sent_the_latest_batch(
    store: RedisStore, redis_client: aioredis.Redis
) -> None:
    """A user with two tabs: a webhook that knows only the user finds the session that was
    active last, not the one that started last."""
    index = keys.identity_key("acme", user_id="u1")
    await store.ingest(PRODUCT, actions("s1", ("A", T0), user_id="u1"), now=T0)
    await store.ingest(PRODUCT, actions("s2", ("B", T0 + 1), user_id="u1"), now=T0 + 1)
    assert await redis_client.get(index) == b"s2"
    await store.ingest(PRODUCT, actions("s1", ("C", T0 + 2), user_id="u1"), now=T0 + 2)
    assert await redis_client.get(index) == b"s1"
    found = await store.link_contact(
        PRODUCT, user_id="u1", email=None, conversation_id="c1", event=None, now=T0 + 3
    )
    assert found.session_id == "s1"


async def test_announced_shards_reach_a_listener(store: RedisStore) -> None:
    """What an api process publishes, a worker process hears (on a cluster too: a publish
    reaches the subscribers of every node)."""
    heard: asyncio.Queue[list[int]] = asyncio.Queue()

    async def listen() -> None:
        async for shards in store.announcements():
            await heard.put(shards)

    listener = asyncio.create_task(listen())
    try:
        for _ in range(50):  # until the subscription is in place
            await store.announce([7, 3, 7])
            try:
                assert await asyncio.wait_for(heard.get(), timeout=0.1) == [3, 7]
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError("no announcement arrived")
        await store.announce([])  # nothing to say: nothing is published
        await store.announce([keys.SHARDS - 1])
        assert await asyncio.wait_for(heard.get(), timeout=2) == [keys.SHARDS - 1]
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
