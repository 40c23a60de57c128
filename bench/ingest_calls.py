"""Service CPU per ingested batch, in-process: the whole ASGI app, a real Redis, no sockets.

B1's service CPU per request moves by ±15 % from one `make bench` run to the next on a small
VM, more than most single changes to the ingest path are worth. Here the app (middleware,
routing, auth, parsing, the store's round trip to a real ``redis-server``, the log line) is
called as an ASGI callable by 32 concurrent tasks, so only the HTTP parsing of uvicorn is
left out, and this process's CPU time per request is the best of five rounds. Each 10-action
batch, shaped like B1's, goes to one of 1000 linked sessions and every action is new.

    .venv/bin/python bench/ingest_calls.py [--requests 4000]

Compare two variants by running each twice, alternating (A B A B): this VM's speed drifts by
10-20 % over minutes, much less within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import uvloop

from app.main import create_app
from app.products import load_products
from app.settings import Settings
from bench.infra import write_products
from bench.loadgen import batch_body
from tests.conftest import INGEST_TOKEN, free_port, start_redis_server

CONCURRENCY = 32
ROUNDS = 5
SESSIONS = 1000
PRODUCT = "b1"


class Caller:
    """Calls the ASGI app with one POST /actions/b1 and checks the answer."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.counter = itertools.count()

    async def ingest(self, session_id: str, *, conversation_id: str | None = None) -> None:
        n = next(self.counter)
        descriptions = [f"{n}|{i} User clicked Export CSV on the Reports page" for i in range(10)]
        payload = batch_body(session_id, descriptions, ts=1.7e9 + n)
        if conversation_id:
            payload["conversation_id"] = conversation_id
        body = json.dumps(payload).encode()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": f"/actions/{PRODUCT}",
            "raw_path": f"/actions/{PRODUCT}".encode(),
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


async def cpu_us_per_request(caller: Caller, requests: int) -> float:
    sessions = itertools.cycle(f"s{i}" for i in range(SESSIONS))
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()

        async def worker() -> None:
            for _ in range(requests // CONCURRENCY):
                await caller.ingest(next(sessions))

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        best = min(best, (time.process_time() - started) / requests * 1e6)
    return best


async def measure(redis_url: str, workdir: Path, requests: int) -> float:
    products_file = write_products(workdir, bot_url="http://127.0.0.1:9/notes", debounce_s=0.15)
    settings = Settings(redis_url=redis_url, log_format="json", log_level="INFO")
    app = create_app(
        settings, products=load_products(products_file), run_worker=False, configure_logs=True
    )
    async with app.router.lifespan_context(app):
        caller = Caller(app)
        for i in range(SESSIONS):  # linked, as in B1; also warms connections and caches
            await caller.ingest(f"s{i}", conversation_id=f"conv-{i}")
        return await cpu_us_per_request(caller, requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        server = start_redis_server(port, workdir=workdir)
        try:
            # The service's log lines go to a file, as in make bench, not to this terminal.
            log_file = Path(workdir) / "service.log"
            sys.stderr.flush()
            stderr = sys.stderr
            with log_file.open("w") as sink:
                sys.stderr = sink
                try:
                    us = uvloop.run(
                        measure(f"redis://127.0.0.1:{port}/0", Path(workdir), args.requests)
                    )
                finally:
                    sys.stderr = stderr
                    logging.shutdown()
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(f"POST /actions, whole app in-process  {us:7.1f} µs CPU per request")


if __name__ == "__main__":
    main()
