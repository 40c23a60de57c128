"""A fake self-hosted bot (the ``http`` platform, SPEC §6.3) served by uvicorn in a thread.

It verifies the Standard Webhooks signature of every note, records what it accepted, and can be
told to fail the next few posts so tests can simulate an outage.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.security import SignatureError, decode_whsec, verify_standard_webhook

START_TIMEOUT_S = 10.0
POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class Attempt:
    """One correctly signed POST /notes, whatever the fake answered."""

    webhook_id: str
    payload: dict[str, Any]
    status: int
    received_at: float  # time.monotonic()


class FakeBot:
    """The bot's state; the ASGI app in ``self.app`` serves ``POST /notes``."""

    def __init__(self, signing_secret: str) -> None:
        self._key = decode_whsec(signing_secret)
        self._lock = threading.Lock()
        self._attempts: list[Attempt] = []
        self._failures: list[int] = []
        self.rejected = 0
        self.url = ""
        self.app = Starlette(routes=[Route("/notes", self._receive, methods=["POST"])])

    @property
    def attempts(self) -> list[Attempt]:
        """Every signed post, failed ones included, in arrival order."""
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

    def wait_for_notes(self, count: int, timeout_s: float) -> list[Attempt]:
        """Poll until at least ``count`` notes were accepted; fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while len(notes := self.notes) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} note(s) within {timeout_s} s, got {notes}")
            time.sleep(POLL_S)
        return notes

    async def _receive(self, request: Request) -> JSONResponse:
        body = await request.body()
        try:
            webhook_id = verify_standard_webhook(
                request.headers, key=self._key, body=body, now=time.time()
            )
        except SignatureError as exc:
            with self._lock:
                self.rejected += 1
            return JSONResponse({"error": str(exc)}, status_code=401)
        status, answer = self._record(webhook_id, json.loads(body))
        return JSONResponse(answer, status_code=status)

    def _record(self, webhook_id: str, payload: dict[str, Any]) -> tuple[int, dict[str, str]]:
        with self._lock:
            status = self._failures.pop(0) if self._failures else 200
            self._attempts.append(Attempt(webhook_id, payload, status, time.monotonic()))
            if status != 200:
                return status, {"error": "simulated outage"}
            return 200, {"id": f"note-{sum(a.status == 200 for a in self._attempts)}"}


def _wait_started(server: uvicorn.Server, thread: threading.Thread) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the fake bot did not start")
        time.sleep(POLL_S)


@contextmanager
def running_bot(signing_secret: str) -> Iterator[FakeBot]:
    """Serve a FakeBot on a loopback port for the duration of the block."""
    bot = FakeBot(signing_secret)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        bot.app, log_level="warning", lifespan="off", ws="none", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        _wait_started(server, thread)
        bot.url = f"http://127.0.0.1:{port}/notes"
        yield bot
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()
