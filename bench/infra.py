"""The processes `make bench` runs on loopback, each started and stopped by the bench: Redis
(bench/chaos.py's RedisProcess), B7's Redis Clusters (tests/cluster.py's LocalRedisCluster),
the fake bot (bench/fakebot.py), the B1 baseline (bench/baseline_app.py) and the service
(tests/e2e/service.py)."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import redis

from app.store import keys
from bench.chaos import RedisProcess
from tests.cluster import LocalRedisCluster
from tests.conftest import HTTP_SECRET, INGEST_TOKEN, WEBHOOK_SECRET, free_port
from tests.e2e.service import Bridge, bridge, stop_process

REPO_ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 20.0
Persistence = Literal["everysec", "always", "none"]
POSTHOG_SECRET = "whsec_" + base64.b64encode(b"posthog-destination-key-0123456789").decode()
RedisClient = redis.Redis | redis.RedisCluster

# b1, b4 and b8 (throughput): a debounce far longer than a run keeps the delivery worker idle,
# so B1 and B8 measure intake alone; b8 takes PostHog events, signed with POSTHOG_SECRET (B8).
# lat (B2, B3, B5): the default timings.
PRODUCTS_TOML = """
[products.b1]
platform = "http"
ingest_token = "{token}"
post_link_debounce_s = 3600.0
post_link_max_wait_s = 3600.0
[products.b1.http]
url = "{url}"
signing_secret = "{signing}"
webhook_secret = "{webhook}"

[products.b4]
platform = "http"
ingest_token = "{token}"
post_link_debounce_s = 3600.0
post_link_max_wait_s = 3600.0
[products.b4.http]
url = "{url}"
signing_secret = "{signing}"
webhook_secret = "{webhook}"

[products.b8]
platform = "http"
ingest_token = "{token}"
post_link_debounce_s = 3600.0
post_link_max_wait_s = 3600.0
[products.b8.http]
url = "{url}"
signing_secret = "{signing}"
webhook_secret = "{webhook}"
[products.b8.posthog]
webhook_secret = "{posthog}"

[products.lat]
platform = "http"
ingest_token = "{token}"
pre_link_window_s = 120.0
post_link_debounce_s = {debounce_s!r}
post_link_max_wait_s = 5.0
bin_seconds = 3
max_pending_actions = 1000
[products.lat.http]
url = "{url}"
signing_secret = "{signing}"
webhook_secret = "{webhook}"
"""


def write_products(workdir: Path, *, bot_url: str, debounce_s: float) -> Path:
    path = workdir / "products.toml"
    text = PRODUCTS_TOML.format(
        token=INGEST_TOKEN,
        url=bot_url,
        signing=HTTP_SECRET,
        webhook=WEBHOOK_SECRET,
        posthog=POSTHOG_SECRET,
        debounce_s=debounce_s,
    )
    path.write_text(text)
    return path


# -- Redis ----------------------------------------------------------------------------------


@dataclass
class RedisHandle:
    """The Redis the service under test uses. ``client`` routes keys (a ``RedisCluster`` on a
    cluster); ``nodes``, on a cluster only, has a plain client for each node (CPU figures)."""

    url: str
    client: RedisClient
    description: str
    nodes: tuple[redis.Redis, ...] = ()

    @property
    def cluster(self) -> bool:
        return bool(self.nodes)


def _set_persistence(client: redis.Redis, persistence: Persistence) -> None:
    """From the AOF of RedisProcess / LocalRedisCluster's nodes to what the bench asks for."""
    if persistence == "none":
        client.config_set("appendonly", "no")
    else:
        client.config_set("appendfsync", persistence)


def _persistence_text(persistence: Persistence) -> str:
    return "no persistence" if persistence == "none" else f"AOF fsync {persistence}"


@contextlib.contextmanager
def redis_server(workdir: Path, persistence: Persistence) -> Iterator[RedisHandle]:
    """BRIDGE_REDIS_URL when set (used as is, never flushed), else a redis-server of our own
    with append-only persistence as configured (docker-compose.yml uses everysec)."""
    external = os.environ.get("BRIDGE_REDIS_URL")
    if external:
        yield RedisHandle(external, redis.Redis.from_url(external), "external BRIDGE_REDIS_URL")
        return
    proc = RedisProcess(workdir)
    proc.start()  # appendonly yes, appendfsync always: relaxed below unless asked for
    try:
        _set_persistence(proc.client, persistence)
        version = proc.client.info("server")["redis_version"]
        described = f"redis-server {version}, {_persistence_text(persistence)}"
        yield RedisHandle(proc.url, proc.client, described)
    finally:
        proc.stop()


@contextlib.contextmanager
def redis_cluster(
    *, primaries: int, replicas: int, persistence: Persistence
) -> Iterator[RedisHandle]:
    """A Redis Cluster of our own on loopback (B7), each node's persistence as configured; its
    URL is one node's, as BRIDGE_REDIS_URL takes it with BRIDGE_REDIS_CLUSTER=true."""
    with LocalRedisCluster.start(primaries=primaries, replicas=replicas) as cluster:
        nodes = tuple(
            redis.Redis.from_url(f"redis://{address}", socket_timeout=5)
            for address in cluster.addresses
        )
        client = redis.RedisCluster.from_url(cluster.url, socket_timeout=5)
        try:
            for node in nodes:
                _set_persistence(node, persistence)
            version = nodes[0].info("server")["redis_version"]
            shape = f"{primaries} primaries"
            if replicas:
                shape += f" + {primaries * replicas} replicas"
            described = f"Redis Cluster {version}, {shape}, {_persistence_text(persistence)}"
            yield RedisHandle(cluster.url, client, described, nodes)
        finally:
            client.close()
            for node in nodes:
                node.close()


# -- subprocesses ---------------------------------------------------------------------------


def _wait_http(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{proc.args!r} exited with code {proc.returncode}:\n{tail}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} was not ready within {READY_TIMEOUT_S} s")


@contextlib.contextmanager
def python_module(
    module: str, *, args: list[str], env: dict[str, str], log_path: Path, ready_url: str
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m <module>`` from the repository root until the block ends."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_http(proc, ready_url, log_path)
        yield proc
    finally:
        stop_process(proc)


# -- the fake bot ---------------------------------------------------------------------------


@dataclass
class BotRecords:
    """A reader of the fake bot's ``GET /records``."""

    base_url: str

    @property
    def notes_url(self) -> str:
        return self.base_url + "/notes"

    async def fetch(
        self, client: httpx.AsyncClient, since: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """The posts after the first ``since``, and the index to ask from next time."""
        response = await client.get(f"{self.base_url}/records", params={"since": since})
        response.raise_for_status()
        data = response.json()
        return int(data["next"]), list(data["records"])

    def count(self) -> int:
        return int(httpx.get(f"{self.base_url}/records", params={"since": 10**9}).json()["next"])


@contextlib.contextmanager
def fake_bot(workdir: Path) -> Iterator[BotRecords]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with python_module(
        "bench.fakebot",
        args=["--port", str(port)],
        env={},
        log_path=workdir / "fakebot.log",
        ready_url=base_url + "/records?since=0",
    ):
        yield BotRecords(base_url)


# -- the baseline and the service -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Served:
    url: str
    pid: int


@contextlib.contextmanager
def baseline_app(workdir: Path, products_file: Path) -> Iterator[Served]:
    """bench/baseline_app.py, configured like the service."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(port),
        "BRIDGE_PRODUCTS_FILE": str(products_file),
    }
    with python_module(
        "bench.baseline_app",
        args=[],
        env=env,
        log_path=workdir / "baseline.log",
        ready_url=base_url + "/healthz",
    ) as proc:
        yield Served(base_url, proc.pid)


@contextlib.contextmanager
def service(
    workdir: Path,
    *,
    redis_url: str,
    products_file: Path,
    env: Mapping[str, str] | None = None,
    log_name: str = "service.log",
) -> Iterator[Bridge]:
    """``python -m app serve`` (one uvicorn worker, INFO JSON logs to a file); ``env``: more
    BRIDGE_* settings (B7: BRIDGE_REDIS_CLUSTER, BRIDGE_REDIS_WAIT_REPLICAS)."""
    with bridge(
        redis_url=redis_url,
        products_file=products_file,
        log_path=workdir / log_name,
        **dict(env or {}),
    ) as running:
        yield running


def base_url(running: Bridge) -> str:
    return str(running.client.base_url).rstrip("/")


def rss_kib(pid: int) -> int:
    """Resident set size of a process (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else -1


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def redis_cpu_s(handle: RedisHandle) -> dict[str, float]:
    """CPU seconds Redis used so far, as ``{"redis": s}``. On a cluster ``redis`` is the sum
    over its primaries, and ``redis_replicas`` (when it has replicas) the sum over those."""
    if not handle.cluster:
        assert isinstance(handle.client, redis.Redis)
        return {"redis": _cpu_s(handle.client)}
    totals: dict[str, float] = {"redis": 0.0}
    for node in handle.nodes:
        role = node.info("replication")["role"]
        name = "redis" if role == "master" else "redis_replicas"
        totals[name] = totals.get(name, 0.0) + _cpu_s(node)
    return totals


def wait_drained(client: RedisClient, *, timeout_s: float = 30.0) -> int:
    """Until no session is due within a second (leased ones are scored at their lease's
    end, far later); returns how many still are when the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        soon_ms = int((time.time() + 1.0) * 1000)
        due = sum(int(client.zcount(keys.due_key(k), "-inf", soon_ms)) for k in range(keys.SHARDS))
        if due == 0 or time.monotonic() > deadline:
            return due
        time.sleep(0.2)


def metric(running: Bridge, name: str, **labels: str) -> float:
    """The sum of a Prometheus series' samples whose labels include ``labels``."""
    text = running.client.get("/metrics").text
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


def metric_by_label(running: Bridge, name: str, label: str, **labels: str) -> dict[str, float]:
    """A Prometheus series' samples summed by one label's value (e.g. requests by status),
    of the samples whose labels include ``labels``."""
    text = running.client.get("/metrics").text
    pattern = re.compile(rf'{re.escape(label)}="([^"]*)"')
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not (line.startswith(name + "{") and all(w in line for w in wanted)):
            continue
        if match := pattern.search(line):
            totals[match.group(1)] = totals.get(match.group(1), 0.0) + float(line.rsplit(" ", 1)[1])
    return totals
