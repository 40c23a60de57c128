"""A fake self-hosted bot (the ``http`` platform) served by uvicorn in a thread.

It verifies the Standard Webhooks signature of every note, records what it accepted, and can be
told to fail the next few posts, to fail a share of posts at random for a while, or to throttle
(429 with ``Retry-After``) so tests and the chaos run can simulate an outage. It can also hold
every answer back for a while (``delay_s``, or ``delay()`` for a period), to play a platform
that hangs, and it counts how many posts it holds at once (``max_concurrent``).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.security import SignatureError, decode_whsec, verify_standard_webhook
from tests.fakes.server import serve_in_thread

POLL_S = 0.02
HOLD_POLL_S = 0.05  # how often a held post checks that its sender still waits


@dataclass(frozen=True, slots=True)
class Attempt:
    """One correctly signed POST /notes, whatever the fake answered."""

    webhook_id: str
    payload: dict[str, Any]
    status: int
    received_at: float  # time.monotonic()
    # When the answer was decided and sent (time.monotonic()): received_at plus any delay.
    answered_at: float | None = None


@dataclass(frozen=True, slots=True)
class _Delay:
    seconds: float
    until: float | None  # time.monotonic(); None: for good


@dataclass(frozen=True, slots=True)
class _RandomFailures:
    rate: float
    status: int
    until: float  # time.monotonic()
    rng: random.Random


class FakeBot:
    """The bot's state; the ASGI app in ``self.app`` serves ``POST /notes``."""

    def __init__(self, signing_secret: str, *, delay_s: float = 0.0) -> None:
        self._key = decode_whsec(signing_secret)
        self._lock = threading.Lock()
        self._attempts: list[Attempt] = []
        self._failures: list[int] = []
        self._throttled: list[int] = []  # Retry-After seconds of the next 429 answers
        self._random: _RandomFailures | None = None
        self._delay = _Delay(delay_s, None) if delay_s > 0 else None
        self._concurrent = 0
        self.max_concurrent = 0  # the most signed posts held at once (see delay())
        self._answered: Counter[int] = Counter()
        self._accepted = 0
        self.rejected = 0
        self.disconnected = 0  # senders that went away mid-request (a killed service)
        self.url = ""
        self.app = Starlette(routes=[Route("/notes", self._receive, methods=["POST"])])

    @property
    def attempts(self) -> list[Attempt]:
        """Every signed post, failed ones included, in the order they were answered (arrival
        order, unless answers are delayed)."""
        with self._lock:
            return list(self._attempts)

    @property
    def notes(self) -> list[Attempt]:
        """The posts the bot accepted (answered 200), in arrival order."""
        return [a for a in self.attempts if a.status == 200]

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` signed posts with ``status`` instead of accepting them."""
        with self._lock:
            self._failures.extend([status] * n)

    def fail_randomly(self, rate: float, *, until: float, status: int = 503, seed: int = 0) -> None:
        """Until ``until`` (``time.monotonic()``), answer each post with ``status`` with
        probability ``rate``; the draws come from a generator seeded with ``seed``."""
        with self._lock:
            self._random = _RandomFailures(rate, status, until, random.Random(seed))

    def throttle(self, n: int, retry_after_s: int) -> None:
        """Answer the next ``n`` posts with 429 and ``Retry-After: retry_after_s``."""
        with self._lock:
            self._throttled.extend([retry_after_s] * n)

    def delay(self, seconds: float, *, until: float | None = None) -> None:
        """Hold every signed post ``seconds`` before answering it (until ``until``,
        ``time.monotonic()``, or for good when None). The answer is decided when it is sent;
        a post whose sender went away meanwhile is not recorded (counted in
        ``disconnected``). ``seconds = 0`` stops delaying."""
        with self._lock:
            self._delay = _Delay(seconds, until) if seconds > 0 else None

    def status_counts(self) -> dict[int, int]:
        """How many signed posts got each status so far."""
        with self._lock:
            return dict(self._answered)

    def wait_for_notes(self, count: int, timeout_s: float) -> list[Attempt]:
        """Poll until at least ``count`` notes were accepted; fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while len(notes := self.notes) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} note(s) within {timeout_s} s, got {notes}")
            time.sleep(POLL_S)
        return notes

    async def _receive(self, request: Request) -> Response:
        try:
            body = await request.body()
        except ClientDisconnect:
            with self._lock:
                self.disconnected += 1
            return Response(status_code=400)  # nobody is listening any more
        try:
            webhook_id = verify_standard_webhook(
                request.headers, key=self._key, body=body, now=time.time()
            )
        except SignatureError as exc:
            with self._lock:
                self.rejected += 1
            return JSONResponse({"error": str(exc)}, status_code=401)
        received_at = time.monotonic()
        with self._lock:
            delay, hold_until = self._delay, None
            if delay is not None and (delay.until is None or received_at < delay.until):
                hold_until = received_at + delay.seconds
            self._concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self._concurrent)
        try:
            if hold_until is not None and not await self._hold(request, hold_until):
                with self._lock:
                    self.disconnected += 1
                return Response(status_code=400)  # nobody is listening any more
            return self._record(webhook_id, json.loads(body), received_at)
        finally:
            with self._lock:
                self._concurrent -= 1

    @staticmethod
    async def _hold(request: Request, until: float) -> bool:
        """Wait until ``until`` (``time.monotonic()``); False as soon as the sender is gone, so
        a post counts as held (``max_concurrent``) only while someone waits for it."""
        while (remaining := until - time.monotonic()) > 0:
            await asyncio.sleep(min(HOLD_POLL_S, remaining))
            if await request.is_disconnected():
                return False
        return True

    def _record(self, webhook_id: str, payload: dict[str, Any], received_at: float) -> JSONResponse:
        with self._lock:
            status, headers = self._next_answer()
            self._answered[status] += 1
            attempt = Attempt(webhook_id, payload, status, received_at, time.monotonic())
            self._attempts.append(attempt)
            if status != 200:
                return JSONResponse(
                    {"error": "simulated outage"}, status_code=status, headers=headers
                )
            self._accepted += 1
            return JSONResponse({"id": f"note-{self._accepted}"})

    def _next_answer(self) -> tuple[int, dict[str, str]]:
        """The status for the post being recorded (the lock is held): queued failures first,
        then throttling, then the random failure mode while it lasts."""
        if self._failures:
            return self._failures.pop(0), {}
        if self._throttled:
            return 429, {"retry-after": str(self._throttled.pop(0))}
        mode = self._random
        if mode is not None and time.monotonic() < mode.until and mode.rng.random() < mode.rate:
            return mode.status, {}
        return 200, {}


@contextmanager
def running_bot(signing_secret: str, *, delay_s: float = 0.0) -> Iterator[FakeBot]:
    """Serve a FakeBot on a loopback port for the duration of the block (every answer held
    ``delay_s`` seconds)."""
    bot = FakeBot(signing_secret, delay_s=delay_s)
    with serve_in_thread(bot.app, name="bot") as base_url:
        bot.url = base_url + "/notes"
        yield bot
