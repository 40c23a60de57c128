"""A small asyncio load generator for the latency benchmarks (B2, B3, B5): open-loop pacing,
the service's two write calls (a batch, a signed link webhook), and collecting what the fake
bot received. Times are ``time.monotonic()``, the same clock the fake bot stamps with."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from bench.infra import BotRecords
from bench.rawhttp import RawClient
from tests.conftest import INGEST_TOKEN
from tests.harness import signed_webhook

T = TypeVar("T")
POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class Sent:
    """One request: when it left, when its answer arrived, and the answer."""

    key: int
    sent_at: float
    answered_at: float
    status: int
    body: dict[str, Any]

    @property
    def took_ms(self) -> float:
        return (self.answered_at - self.sent_at) * 1000


def batch_body(session_id: str, descriptions: Sequence[str], *, ts: float) -> dict[str, Any]:
    """An action batch shaped like the wrk script's (bench/wrk_ingest.lua)."""
    actions = [
        {
            "description": d,
            "timestamp_start": round(ts + i * 0.001, 3),
            "timestamp_end": round(ts + i * 0.001 + 0.25, 3),
            "index": i,
            "type": "click",
            "title": "Reports - Acme",
            "canonical_url": "https://app.acme.example/reports/:id",
        }
        for i, d in enumerate(descriptions)
    ]
    return {"session_id": session_id, "user_id": f"user-{session_id}", "actions": actions}


class Sender:
    """Posts to one server through a :class:`RawClient`; every call returns a :class:`Sent`."""

    def __init__(self, base_url: str, *, connections: int = 64) -> None:
        url = httpx.URL(base_url)
        assert url.port is not None
        self.http = RawClient(url.host, url.port, size=connections)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def post(self, key: int, path: str, body: bytes, headers: dict[str, str]) -> Sent:
        sent_at = time.monotonic()
        answer = await self.http.request("POST", path, body, headers)
        parsed = json.loads(answer.body) if answer.body else {}
        return Sent(key, sent_at, time.monotonic(), answer.status, parsed)

    async def batch(self, key: int, product_id: str, body: dict[str, Any]) -> Sent:
        headers = {"content-type": "application/json", "authorization": f"Bearer {INGEST_TOKEN}"}
        return await self.post(key, f"/actions/{product_id}", json.dumps(body).encode(), headers)

    async def link(self, key: int, product_id: str, session_id: str) -> Sent:
        """A signed ``conversation.created`` webhook (the http platform) naming the session."""
        body = {
            "event": "conversation.created",
            "conversation_id": f"conv-{session_id}",
            "session_id": session_id,
        }
        raw, headers = signed_webhook(body, now=time.time())
        return await self.post(key, f"/chatbot-webhook/{product_id}", raw, headers)


async def paced(
    jobs: Sequence[Callable[[], Coroutine[Any, Any, T]]], *, rate_per_s: float
) -> list[T]:
    """Open loop: job k starts at k / rate whatever happened to the earlier ones."""
    start = time.monotonic()
    tasks: list[asyncio.Task[T]] = []
    for k, job in enumerate(jobs):
        delay = start + k / rate_per_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(job()))
    return list(await asyncio.gather(*tasks))


async def bounded(jobs: Iterable[Callable[[], Awaitable[T]]], *, limit: int) -> list[T]:
    """Run the jobs with at most ``limit`` at a time, results in order."""
    gate = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await job()

    return list(await asyncio.gather(*(run(job) for job in jobs)))


async def link_all(sender: Sender, product_id: str, session_ids: Sequence[str]) -> None:
    """Link every session through a signed webhook; fail loudly if one does not link."""
    jobs = [
        (lambda i=i, sid=sid: sender.link(i, product_id, sid)) for i, sid in enumerate(session_ids)
    ]
    answers = await bounded(jobs, limit=16)
    bad = [a for a in answers if a.status != 200 or a.body.get("status") != "linked"]
    if bad:
        raise RuntimeError(f"{len(bad)} link webhook(s) failed, e.g. {bad[0]}")


async def collect(
    bot: BotRecords,
    *,
    since: int,
    done: Callable[[list[dict[str, Any]]], bool],
    timeout_s: float,
    settle_s: float = 0.0,
) -> list[dict[str, Any]]:
    """The fake bot's posts from ``since`` on, polled until ``done(posts)`` (or the timeout),
    then for ``settle_s`` more to catch any extra note."""
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=10.0) as client:
        while time.monotonic() < deadline and not done(records):
            since, more = await bot.fetch(client, since)
            records += more
            await asyncio.sleep(POLL_S)
        if settle_s:
            await asyncio.sleep(settle_s)
            since, more = await bot.fetch(client, since)
            records += more
    return records


def percentiles(values: Sequence[float], *, digits: int = 1) -> dict[str, float]:
    """p50/p90/p99/max/mean of a sample (nearest rank)."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, round(p * len(ordered)) - 1))], digits)

    return {
        "count": len(ordered),
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": round(ordered[-1], digits),
        "mean": round(sum(ordered) / len(ordered), digits),
    }
