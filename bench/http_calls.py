"""Client CPU per outbound note, in-process: how the HTTP client's transports compare.

The delivery worker's platform call was the largest share of a note's CPU in `make bench`
profiles. A transport is judged here, where the run-to-run noise of a whole bench run does not
hide it: each variant POSTs the same signed ~1 KB note body to a local server (its own process)
from 32 concurrent tasks, through the service's ``http_client`` with the transport under test, and
reports the best of three rounds of this process's CPU time per request.

    .venv/bin/python bench/http_calls.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from app.platforms.client import PlatformTransport, http_client
from app.security import decode_whsec, standard_webhook_headers
from tests.conftest import HTTP_SECRET, free_port

CONCURRENCY = 32
ROUNDS = 3
NOTE = (
    b'{"kind":"actions","product_id":"lat","session_id":"s1","conversation_id":"c1",'
    b'"note":"'
    + b"\\n".join(b"- 12:00:0%d User clicked Export CSV on the Reports page" % i for i in range(10))
    + b'"}'
)
SERVER = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

async def note(request):
    await request.body()
    return Response(b'{"id":"n1"}', media_type="application/json")

app = Starlette(routes=[Route("/notes", note, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False, loop="uvloop", http="httptools")
"""


async def cpu_us_per_request(client: httpx.AsyncClient, url: str, requests: int) -> float:
    key = decode_whsec(HTTP_SECRET)

    async def post(n: int) -> None:
        headers = {
            "content-type": "application/json",
            **standard_webhook_headers(
                key, msg_id=f"msg_{n}", timestamp=int(time.time()), body=NOTE
            ),
        }
        response = await client.send(
            client.build_request("POST", url, content=NOTE, headers=headers)
        )
        response.raise_for_status()

    for n in range(300):  # connections opened, caches warm
        await post(n)
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()

        async def worker(w: int) -> None:
            for n in range(requests // CONCURRENCY):
                await post(w * requests + n)

        await asyncio.gather(*(worker(w) for w in range(CONCURRENCY)))
        best = min(best, (time.process_time() - started) / requests * 1e6)
    return best


VARIANTS: dict[str, Callable[[], httpx.AsyncBaseTransport]] = {
    # What the service used before PlatformTransport: few idle connections, since httpcore
    # checks each of them on every request.
    "httpx's own transport (httpcore)": lambda: httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=256, max_keepalive_connections=16)
    ),
    "the service's PlatformTransport (aiohttp)": PlatformTransport,
}


async def measure(url: str, requests: int) -> dict[str, float]:
    results = {}
    for name, transport in VARIANTS.items():
        async with http_client(transport()) as client:
            results[name] = await cpu_us_per_request(client, url, requests)
    return results


@contextlib.contextmanager
def note_server() -> Iterator[str]:
    """A minimal note endpoint in its own process; yields its URL."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    url = f"http://127.0.0.1:{port}/notes"
    try:
        for _ in range(100):
            try:
                httpx.post(url, content=b"{}")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per round")
    args = parser.parse_args()
    with note_server() as url:
        results = asyncio.run(measure(url, args.requests))
    width = max(len(name) for name in results)
    for name, us in results.items():
        print(f"{name:<{width}}  {us:7.1f} µs CPU per request")


if __name__ == "__main__":
    main()
