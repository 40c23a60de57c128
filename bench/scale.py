"""B4: many idle linked sessions in Redis, written through the store's own scripts.

An idle linked session here is what a real one leaves behind: one 10-action batch that came
with its conversation id (ingest.lua links it), the at-link flush note claimed (claim.lua) and
confirmed (ack.lua) — so Redis holds its state hash, its dedupe set and its user's identity
key, and its posted-note list when the product's platform redacts notes (only then does the
service keep note ids). The bench claims and acknowledges the notes itself (no HTTP), which is
why populating 100 000 sessions takes seconds; the service's worker may claim a few of them
first and really post them to the fake bot, which ends in the same state.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx
import redis
import redis.asyncio as aioredis
import uvloop

from app.clock import SystemClock
from app.models import ActionsPayload, SlimAction
from app.platforms import build_platform
from app.products import ProductConfig
from app.store import keys
from app.store.redis_store import Claim, RedisStore
from bench.latency import descriptions
from bench.loadgen import bounded

CHUNK = 1000
CONCURRENT_CHUNKS = 2
ACK_CONCURRENCY = 32
LEASE_S = 30.0
MAX_NOTE_ACTIONS = 1000


def scale_actions(ts: float) -> list[SlimAction]:
    return [
        SlimAction.model_validate(
            {
                "description": description,
                "timestamp_start": ts + i * 0.001,
                "timestamp_end": ts + i * 0.001 + 0.25,
                "index": i,
                "type": "click",
                "title": "Reports - Acme",
                "canonical_url": "https://app.acme.example/reports/:id",
            }
        )
        for i, description in enumerate(descriptions("b4", 0))
    ]


def payloads(prefix: str, indexes: range, actions: list[SlimAction]) -> list[ActionsPayload]:
    return [
        ActionsPayload(
            session_id=f"{prefix}{i}",
            user_id=f"user-{prefix}{i}",
            conversation_id=f"conv-{prefix}{i}",
            actions=actions,
        )
        for i in indexes
    ]


def redacts(product: ProductConfig) -> bool:
    """Whether the service keeps the product's note ids, as its worker decides it."""
    return build_platform(product, httpx.AsyncClient(), SystemClock()).redacts


async def ack_all(store: RedisStore, product: ProductConfig, claims: Sequence[Claim]) -> None:
    keep = redacts(product)
    jobs = [
        (
            lambda c=c: store.ack(
                c, product, note_id=f"note-{c.session_id}", now=time.time(), keep_note_id=keep
            )
        )
        for c in claims
    ]
    outcomes = await bounded(jobs, limit=ACK_CONCURRENCY)
    if not all(o.acked for o in outcomes):
        raise RuntimeError("a bench claim lost its lease while populating B4")


async def claim_and_ack(store: RedisStore, product: ProductConfig, *, limit: int) -> int:
    """Claim up to ``limit`` due flush notes and acknowledge them as delivered."""
    found = await store.claim_due(
        now=time.time(), limit=limit, lease_s=LEASE_S, max_note_actions=MAX_NOTE_ACTIONS
    )
    claims = found.claims
    if any(c.product_id != product.id for c in claims):
        raise RuntimeError("the due queue held another product's work while populating B4")
    await ack_all(store, product, claims)
    return len(claims)


async def populate_chunk(
    store: RedisStore, product: ProductConfig, batch: list[ActionsPayload]
) -> int:
    """Ingest (and so link) a chunk, then claim and acknowledge flush notes; returns how many
    the bench acknowledged (a concurrent chunk or the service's worker may take some)."""
    await store.ingest(product, batch, now=time.time())
    return await claim_and_ack(store, product, limit=len(batch))


async def populate(
    redis_url: str, product: ProductConfig, *, prefix: str, sessions: int
) -> dict[str, Any]:
    """Chunks overlap (CONCURRENT_CHUNKS) so Python and Redis work at the same time; a final
    sweep takes whatever flush note a chunk's claim left to another."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = RedisStore(client)
        await store.load_scripts()
        actions = scale_actions(time.time())
        started = time.monotonic()
        jobs = [
            (lambda r=r: populate_chunk(store, product, payloads(prefix, r, actions)))
            for r in (range(i, min(sessions, i + CHUNK)) for i in range(0, sessions, CHUNK))
        ]
        acked = sum(await bounded(jobs, limit=CONCURRENT_CHUNKS))
        while swept := await claim_and_ack(store, product, limit=CHUNK):
            acked += swept
        return {
            "sessions": sessions,
            "populate_s": round(time.monotonic() - started, 1),
            "flush_notes_acked_by_bench": acked,
        }
    finally:
        await client.aclose()


def wait_idle(client: redis.Redis, product_id: str, *, timeout_s: float = 60.0) -> int:
    """Until no session of the product is in the due queue; returns how many still are."""
    deadline = time.monotonic() + timeout_s
    pattern = keys.due_member(product_id, "*")
    while True:
        left = sum(
            1
            for k in range(keys.SHARDS)
            for _ in client.zscan_iter(keys.due_key(k), match=pattern, count=1000)
        )
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def key_sizes(client: redis.Redis, product_id: str, session_id: str) -> dict[str, int]:
    """``MEMORY USAGE`` of each key one idle session holds (bytes, with Redis's overhead)."""
    k = keys.session_keys(product_id, session_id)
    identity = keys.identity_key(product_id, user_id=f"user-{session_id}")
    named = {"state": k.state, "pre": k.pre, "out": k.out, "seen": k.seen, "notes": k.notes}
    named["identity"] = identity
    sizes = {name: client.memory_usage(key, samples=0) for name, key in named.items()}
    return {name: int(size) for name, size in sizes.items() if size is not None}


def encoding(client: redis.Redis, key: str) -> str:
    value = client.object("encoding", key)
    return value.decode() if isinstance(value, bytes) else str(value)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def measure_memory(
    client: redis.Redis, redis_url: str, product: ProductConfig, *, prefix: str, sessions: int
) -> dict[str, Any]:
    """Populate and report Redis's used_memory growth per session."""
    before = used_memory(client)
    result = uvloop.run(populate(redis_url, product, prefix=prefix, sessions=sessions))
    left = wait_idle(client, product.id)
    after = used_memory(client)
    per_session = (after - before) / sessions
    k = keys.session_keys(product.id, f"{prefix}0")
    encodings = {
        name: encoding(client, key)
        for name, key in (("state", k.state), ("seen", k.seen), ("notes", k.notes))
    }
    return {
        **result,
        "sessions_still_due": left,
        "used_memory_before": before,
        "used_memory_after": after,
        "bytes_per_session": round(per_session, 1),
        "sample_session_key_bytes": key_sizes(client, product.id, f"{prefix}0"),
        "sample_session_encodings": encodings,
    }
