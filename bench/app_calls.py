"""Service CPU per ingested batch and per delivered note, in-process: the whole app, a real
Redis, a real note server, no HTTP parsing on the way in.

B1's and B2's service CPU moves by ±15 % from one `make bench` run to the next on a small VM,
more than most single changes to the hot paths are worth. Here the ASGI app (middleware,
routing, auth, parsing, the store's round trips to a real ``redis-server``, the log lines) is
called directly, and this process's CPU time is measured:

- **ingest**: 32 concurrent tasks POST 10-action batches, shaped like B1's, to 1000 linked
  sessions whose notes are not due for an hour (CPU per batch);
- **ingest + note**: groups of 8 batches to sessions with no debounce, each group's notes
  delivered by the service's own worker loop to a local note server (bench/http_calls.py's,
  in its own process) before the next group; CPU per batch minus the ingest figure is the
  CPU per note.

Each figure is the best of five rounds.

    .venv/bin/python bench/app_calls.py [--requests 4000] [--notes 2000]

Compare two variants by running each twice, alternating (A B A B): this VM's speed drifts by
10-20 % over minutes, much less within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvloop

from app.main import create_app
from app.platforms.base import Platform
from app.products import load_products
from app.settings import Settings
from bench.http_calls import note_server
from bench.infra import write_products
from bench.loadgen import batch_body
from tests.conftest import INGEST_TOKEN, free_port, start_redis_server

CONCURRENCY = 32
ROUNDS = 5
SESSIONS = 1000
GROUP = 8
INTAKE = "b1"  # notes due in an hour: intake alone
NOTES = "lat"  # no debounce: every batch makes a note at once


class Caller:
    """Calls the ASGI app with one POST /actions/<product> and checks the answer."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.counter = itertools.count()

    async def ingest(
        self, product_id: str, session_id: str, *, conversation_id: str | None = None
    ) -> None:
        n = next(self.counter)
        descriptions = [f"{n}|{i} User clicked Export CSV on the Reports page" for i in range(10)]
        payload = batch_body(session_id, descriptions, ts=1.7e9 + n)
        if conversation_id:
            payload["conversation_id"] = conversation_id
        body = json.dumps(payload).encode()
        path = f"/actions/{product_id}"
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"bench"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"authorization", f"Bearer {INGEST_TOKEN}".encode()),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])
        status = 0

        async def receive() -> dict[str, Any]:
            return next(messages, {"type": "http.disconnect"})

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await self.app(scope, receive, send)
        if status != 202:
            raise RuntimeError(f"ingest answered {status}")


class Delivered:
    """Counts the notes a platform adapter posted, so the bench can wait for a group's."""

    def __init__(self, platform: Platform) -> None:
        self.count = 0
        self.changed = asyncio.Event()
        post_note = platform.post_note

        async def counted(note: Any) -> str | None:
            note_id = await post_note(note)
            self.count += 1
            self.changed.set()
            return note_id

        platform.post_note = counted  # type: ignore[method-assign]

    async def reach(self, count: int) -> None:
        while self.count < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 10)


async def intake_us(caller: Caller, requests: int) -> float:
    sessions = itertools.cycle(f"s{i}" for i in range(SESSIONS))
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()

        async def sender() -> None:
            for _ in range(requests // CONCURRENCY):
                await caller.ingest(INTAKE, next(sessions))

        await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))
        best = min(best, (time.process_time() - started) / requests * 1e6)
    return best


async def batch_and_note_us(caller: Caller, delivered: Delivered, notes: int) -> float:
    sessions = itertools.cycle(f"n{i}" for i in range(SESSIONS))
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(notes // GROUP):
            expected = delivered.count + GROUP
            group = [next(sessions) for _ in range(GROUP)]
            await asyncio.gather(*(caller.ingest(NOTES, s) for s in group))
            await delivered.reach(expected)
        best = min(best, (time.process_time() - started) / (notes // GROUP * GROUP) * 1e6)
    return best


async def measure(redis_url: str, workdir: Path, notes_url: str, args: Any) -> dict[str, float]:
    products = load_products(write_products(workdir, bot_url=notes_url, debounce_s=0.15))
    products[NOTES] = products[NOTES].model_copy(update={"post_link_debounce_s": 0.0})
    settings = Settings(redis_url=redis_url, log_format="json", log_level="INFO")
    app = create_app(settings, products=products, run_worker=True, configure_logs=True)
    async with app.router.lifespan_context(app):
        caller = Caller(app)
        delivered = Delivered(app.state.services.platforms[NOTES])
        # Linked first, as in B1 and B2; also warms connections and caches.
        for i in range(SESSIONS):
            await caller.ingest(INTAKE, f"s{i}", conversation_id=f"conv-{i}")
            await caller.ingest(NOTES, f"n{i}", conversation_id=f"conv-{i}")
        await delivered.reach(SESSIONS)  # the at-link flushes
        ingest = await intake_us(caller, args.requests)
        both = await batch_and_note_us(caller, delivered, args.notes)
    return {"ingest": ingest, "ingest + note": both, "note": both - ingest}


@contextlib.contextmanager
def logs_to(path: Path) -> Iterator[None]:
    """The service's log lines go to a file, as in make bench, not to this terminal."""
    sys.stderr.flush()
    stderr = sys.stderr
    with path.open("w") as sink:
        sys.stderr = sink
        try:
            yield
        finally:
            sys.stderr = stderr
            logging.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="batches per intake round")
    parser.add_argument("--notes", type=int, default=2000, help="notes per note round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir, note_server() as notes_url:
        port = free_port()
        server = start_redis_server(port, workdir=workdir)
        try:
            with logs_to(Path(workdir) / "service.log"):
                redis_url = f"redis://127.0.0.1:{port}/0"
                results = uvloop.run(measure(redis_url, Path(workdir), notes_url, args))
        finally:
            server.terminate()
            server.wait(timeout=10)
    for name, us in results.items():
        print(f"{name:<14} {us:7.1f} µs CPU per {'note' if name == 'note' else 'batch'}")


if __name__ == "__main__":
    main()
