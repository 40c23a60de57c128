"""Client CPU per Redis call, in-process: how redis-py's options and call paths compare.

A lever for the store's hot path is judged here, not by a whole `make bench` run, whose
run-to-run noise on a small VM (about 20 %) hides changes of a few microseconds per call. Each
variant sends the same `EVALSHA` of a one-command script from 32 concurrent tasks and reports
the best of three rounds of this process's CPU time per call.

    .venv/bin/python bench/redis_calls.py [--calls 6000] [--no-cluster]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# The repository root first: the cluster launcher and the Redis helper live in tests/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from tests.cluster import LocalRedisCluster
from tests.conftest import free_port, start_redis_server

SCRIPT = "return redis.call('HINCRBY', KEYS[1], 'n', 1)"
KEY = "{s1}:bench"
CONCURRENCY = 32
ROUNDS = 3

Call = Callable[[], Awaitable[Any]]


async def cpu_us_per_call(call: Call, calls: int) -> float:
    """The best of ROUNDS rounds of ``calls`` calls, in microseconds of this process's CPU."""
    for _ in range(300):  # connections opened, caches warm
        await call()
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()

        async def worker() -> None:
            for _ in range(calls // CONCURRENCY):
                await call()

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        best = min(best, (time.process_time() - started) / calls * 1e6)
    return best


def service_options() -> dict[str, Any]:
    """What app/main.py gives the client: timeouts and one quick retry."""
    return {
        "socket_timeout": 3,
        "socket_connect_timeout": 2,
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1),
    }


async def standalone(calls: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        proc = start_redis_server(port, workdir=workdir)
        plain = aioredis.Redis(port=port)
        service = aioredis.Redis(port=port, health_check_interval=30, **service_options())
        try:
            sha = await plain.script_load(SCRIPT)
            args = ("EVALSHA", sha, 1, KEY)

            def one_in_a_pipeline() -> Awaitable[Any]:
                pipe = service.pipeline(transaction=False)
                pipe.execute_command(*args)
                return pipe.execute()

            return {
                "standalone, no timeouts": await cpu_us_per_call(
                    lambda: plain.execute_command(*args), calls
                ),
                "standalone, the service's options": await cpu_us_per_call(
                    lambda: service.execute_command(*args), calls
                ),
                "standalone, the service's options, a pipeline of one": await cpu_us_per_call(
                    one_in_a_pipeline, calls
                ),
            }
        finally:
            await plain.aclose()
            await service.aclose()
            proc.terminate()
            proc.wait(timeout=10)


async def cluster(calls: int) -> dict[str, float]:
    with LocalRedisCluster.start(primaries=3) as nodes:
        client = aioredis.RedisCluster.from_url(nodes.url, **service_options())
        try:
            await client.initialize()
            sha = await client.script_load(SCRIPT)
            args = ("EVALSHA", sha, 1, KEY)
            node = client.get_node_from_key(KEY)
            assert node is not None
            return {
                "cluster client, the service's options": await cpu_us_per_call(
                    lambda: client.execute_command(*args), calls
                ),
                "straight to the slot's node": await cpu_us_per_call(
                    lambda: node.execute_command(*args), calls
                ),
            }
        finally:
            await client.aclose()


async def main(args: argparse.Namespace) -> None:
    results = await standalone(args.calls)
    if not args.no_cluster:
        results.update(await cluster(args.calls))
    width = max(len(name) for name in results)
    for name, us in results.items():
        print(f"{name:<{width}}  {us:6.1f} µs CPU per call")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=6000, help="calls per round")
    parser.add_argument("--no-cluster", action="store_true", help="standalone variants only")
    asyncio.run(main(parser.parse_args()))
