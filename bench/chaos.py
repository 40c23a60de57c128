"""Fault-injection run (docs/reliability.md): is every accepted action delivered, dead-lettered or
dropped by policy, while the service is SIGKILLed, the bot fails and Redis restarts or loses a
cluster primary?

It starts its own Redis, the fake bot and the service (``python -m app serve``), sends a few
hundred sessions of traffic the way a real sender does (retrying 503s and connection errors),
injects the faults, waits for the queue to drain, then compares every accepted action with the
notes the bot received. Beside the main product, a product with a low note budget
(``max_notes_per_minute``) takes load all along, and a product whose platform hangs for a while
(every post held for seconds) takes a burst of sessions meanwhile: nothing of theirs may be lost
either, and the other products' notes must not wait for the hanging one. Two topologies, run
one after the other by default:

- ``standalone``: one redis-server (append-only, fsync always), restarted once;
- ``cluster``: a Redis Cluster of 3 primaries and 3 replicas (tests/cluster.py), the service with
  ``BRIDGE_REDIS_CLUSTER=true`` and ``BRIDGE_REDIS_WAIT_REPLICAS=1``; one primary is SIGKILLed,
  its replica promoted, and the dead node restarted (it rejoins as a replica).

Exit code 1 when an action was lost (or the queue did not drain) in any of them.

    .venv/bin/python bench/chaos.py [--topology both|standalone|cluster] [--cluster]
        [--duration 60] [--sessions 300] [--seed 1]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import heapq
import itertools
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The fakes and the service runner live in tests/, next to this folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import redis
from redis.exceptions import RedisClusterException

from app.store import keys
from tests.cluster import LocalRedisCluster, cluster_nodes, slot_of
from tests.conftest import HTTP_SECRET, INGEST_TOKEN, WEBHOOK_SECRET, free_port, start_redis_server
from tests.e2e.service import Bridge, bridge
from tests.fakes.bot import Attempt, FakeBot, running_bot
from tests.harness import signed_webhook

REPO_ROOT = Path(__file__).resolve().parents[1]
PRODUCT = "chaos"
CAPPED = "chaos-capped"  # a low shared note budget, loaded all along
HANGING = "chaos-hang"  # its platform hangs for a while (its own fake bot)
PRODUCTS = (PRODUCT, CAPPED, HANGING)
# Session ids and action descriptions of each product's traffic: "<session>-0001", "<x>0001-a000".
PREFIXES = {PRODUCT: ("chaos", "c"), CAPPED: ("capped", "k"), HANGING: ("hang", "h")}
RESULTS_DIR = REPO_ROOT / "bench" / "results"
RESULTS_FILES = {
    "standalone": RESULTS_DIR / "chaos-latest.json",
    "cluster": RESULTS_DIR / "chaos-cluster-latest.json",
}
TOPOLOGIES = ("standalone", "cluster")
PRODUCTS_TOML = f"""
[products.{PRODUCT}]
platform = "http"
ingest_token = "{INGEST_TOKEN}"
pre_link_window_s = 120.0
max_pending_actions = 1000
post_link_debounce_s = 0.15
post_link_max_wait_s = 1.0
bin_seconds = 3

[products.{PRODUCT}.http]
url = "{{url}}"
signing_secret = "{HTTP_SECRET}"
webhook_secret = "{WEBHOOK_SECRET}"

[products.{CAPPED}]
platform = "http"
ingest_token = "{INGEST_TOKEN}"
post_link_debounce_s = 0.15
post_link_max_wait_s = 1.0
max_notes_per_minute = {{capped_per_minute}}

[products.{CAPPED}.http]
url = "{{url}}"
signing_secret = "{HTTP_SECRET}"
webhook_secret = "{WEBHOOK_SECRET}"

[products.{HANGING}]
platform = "http"
ingest_token = "{INGEST_TOKEN}"
post_link_debounce_s = 0.15
post_link_max_wait_s = 1.0
max_notes_in_flight = {{hang_in_flight}}

[products.{HANGING}.http]
url = "{{hang_url}}"
signing_secret = "{HTTP_SECRET}"
webhook_secret = "{WEBHOOK_SECRET}"
"""

ACTION_STEP_S = 0.5  # between a session's actions: its sequence order is its time order
SENDER_TIMEOUT_S = 5.0
SENDER_GIVE_UP_S = 90.0
RETRY_STATUSES = frozenset({502, 503, 504})
BOT_FAILURE_S = 15.0
THROTTLED_POSTS = 5
THROTTLE_RETRY_AFTER_S = 2
REDIS_DOWN_S = 2.0  # about what a real Redis restart takes (a container, a failover)
# The throttled product: a tenth as many sessions as the main one, spread the same way, with a
# budget of two notes a second (burst 12). Unthrottled its traffic would post about 5 notes per
# session (the flush and one per post-link batch), 3 a second; held back, a session needs 2
# (the flush, then everything after it): about 1.3 a second, so the backlog stays short.
CAPPED_SHARE = 10
CAPPED_PER_MINUTE = 120
# The hanging product: its platform holds every post HANG_DELAY_S (under the 15 s call
# timeout, so each is answered) from HANG_FROM to HANG_UNTIL of the run, before the first
# SIGKILL; a burst of sessions (a quarter as many as the main product's) starts meanwhile, more
# notes than the worker's 64 slots, of which the product may take HANG_IN_FLIGHT.
HANG_FROM, HANG_UNTIL = 0.05, 0.18
HANG_DELAY_S = 8.0
HANG_SHARE = 4
HANG_IN_FLIGHT = 16
# The cluster variant: 3 primaries with a replica each; a primary silent for the node timeout
# is failed over to its replica (about node timeout + 1-2 s).
CLUSTER_PRIMARIES = 3
CLUSTER_NODE_TIMEOUT_MS = 2000
CLUSTER_WAIT_S = 60.0  # at most, for the failover and for the restarted node to rejoin
# The dead node is started again this long after its replica's promotion (an orchestrator's
# restart): meanwhile the promoted primary has no replica, and with WAIT 1 its slots answer 503.
CLUSTER_REJOIN_AFTER_S = 2.0
CLUSTER_ENV = {"BRIDGE_REDIS_CLUSTER": "true", "BRIDGE_REDIS_WAIT_REPLICAS": "1"}
# A note the bot accepted this close to a crash may not have been acknowledged in Redis: the
# next process posts it again (at-least-once delivery).
CRASH_SLACK_S = 2.0
DRAIN_QUIET_S = 3.0
DRAIN_TIMEOUT_S = 100.0
PROGRESS_EVERY_S = 10.0


def log(start: float, message: str) -> None:
    print(f"[{time.monotonic() - start:6.1f}s] {message}", flush=True)


# -- infrastructure -------------------------------------------------------------------------


class RedisProcess:
    """A redis-server with append-only persistence that can be restarted on its port and dir."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None
        self.client = redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self) -> None:
        self._proc = start_redis_server(self.port, workdir=str(self._workdir), appendonly=True)
        # Every write is on disk before Redis answers: a 2xx then really means durable.
        self.client.config_set("appendfsync", "always")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()  # SIGTERM: Redis flushes the AOF and exits
            self._proc.wait(timeout=30)

    def restart(self, *, down_s: float) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def describe(self) -> str:
        return f"redis :{self.port} (appendonly, fsync always)"


class RedisClusterProcess:
    """A Redis Cluster of child processes (tests/cluster.py) and a cluster client for the
    accounting: it follows the slot map through a failover, as the service's client does."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._cluster: LocalRedisCluster | None = None
        self._client: redis.RedisCluster | None = None
        self.started_in_s = 0.0

    def start(self) -> None:
        begun = time.monotonic()
        self._cluster = LocalRedisCluster.start(
            primaries=CLUSTER_PRIMARIES, replicas=1, node_timeout_ms=CLUSTER_NODE_TIMEOUT_MS
        )
        self.started_in_s = time.monotonic() - begun
        self._client = redis.RedisCluster.from_url(
            self._cluster.url, socket_timeout=5, socket_connect_timeout=2
        )

    @property
    def cluster(self) -> LocalRedisCluster:
        assert self._cluster is not None, "the cluster is not started"
        return self._cluster

    @property
    def client(self) -> redis.RedisCluster:
        assert self._client is not None, "the cluster is not started"
        return self._client

    @property
    def url(self) -> str:
        return self.cluster.url

    def stop(self) -> None:
        """Stop every node; their log tails stay in the work dir (kept when the run fails)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            (self._workdir / "cluster-nodes.log").write_text(self._cluster.logs() + "\n")
            self._cluster.stop()
            self._cluster = None

    def describe(self) -> str:
        nodes = len(self.cluster.live_addresses)
        took = self.started_in_s
        return f"redis cluster of {nodes} nodes ({CLUSTER_PRIMARIES} primaries) in {took:.1f} s"

    def shards_served_by(self, address: str) -> set[int]:
        """The shards whose hash slot ``address`` serves, as that node sees the slot map."""
        views = cluster_nodes(int(address.rsplit(":", 1)[1]))
        slots = [v for v in views if v.address == address and v.is_primary]
        return {
            k for k in range(keys.SHARDS) if any(v.serves(slot_of(keys.due_key(k))) for v in slots)
        }


Store = RedisProcess | RedisClusterProcess


class ServiceProcess:
    """The service as a subprocess (tests/e2e/service.py); SIGKILL and start it again."""

    def __init__(
        self,
        *,
        redis_url: str,
        products_file: Path,
        log_dir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self._redis_url = redis_url
        self._products_file = products_file
        self._log_dir = log_dir
        self._env = env or {}
        self._stack: contextlib.ExitStack | None = None
        self._bridge: Bridge | None = None
        self.incarnation = 0
        self.url: str | None = None
        self.dropped_by_policy = 0.0  # scraped from /metrics before each process ends
        self.throttled: Counter[str] = Counter()  # bridge_notes_throttled_total, by product

    def start(self) -> Bridge:
        self.incarnation += 1
        stack = contextlib.ExitStack()
        log_path = self._log_dir / f"service-{self.incarnation}.log"
        self._bridge = stack.enter_context(
            bridge(
                redis_url=self._redis_url,
                products_file=self._products_file,
                log_path=log_path,
                **self._env,
            )
        )
        self._stack = stack
        self.url = str(self._bridge.client.base_url).rstrip("/")
        return self._bridge

    def kill(self) -> int:
        assert self._bridge is not None and self._stack is not None
        self._scrape_drops(self._bridge)
        pid = self._bridge.proc.pid
        self._bridge.kill()
        self._stack.close()
        self._bridge = None
        return pid

    def stop(self) -> None:
        """SIGTERM (a graceful drain) through the runner's own exit."""
        if self._bridge is not None and self._stack is not None:
            self._scrape_drops(self._bridge)
            self._stack.close()
            self._bridge = None

    def _scrape_drops(self, running: Bridge) -> None:
        with contextlib.suppress(httpx.HTTPError):
            text = running.client.get("/metrics").text
            self.dropped_by_policy += sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("bridge_actions_dropped_total{")
            )
            for line in text.splitlines():
                if line.startswith('bridge_notes_throttled_total{product="'):
                    product = line.split('"')[1]
                    self.throttled[product] += int(float(line.rsplit(" ", 1)[1]))


# -- traffic --------------------------------------------------------------------------------


@dataclass
class SessionPlan:
    """One session's traffic: action batches before and after its link webhook."""

    index: int
    start_at: float  # seconds into the run
    base_ts: float  # timestamp_start of its first action
    pre: list[list[str]] = field(default_factory=list)
    post: list[list[str]] = field(default_factory=list)
    product: str = PRODUCT

    @property
    def session_id(self) -> str:
        return f"{PREFIXES[self.product][0]}-{self.index:04d}"

    @property
    def conversation_id(self) -> str:
        return f"conv-{self.index:04d}" if self.product == PRODUCT else f"conv-{self.session_id}"

    def timestamp(self, description: str) -> float:
        return self.base_ts + ACTION_STEP_S * sequence(description)


def sequence(description: str) -> int:
    return int(description.rsplit("-a", 1)[1])


def plan_sessions(
    rng: random.Random,
    *,
    sessions: int,
    window_s: float,
    product: str = PRODUCT,
    from_s: float = 0.0,
) -> list[SessionPlan]:
    """``sessions`` of ``product``, starting at random in ``window_s`` from ``from_s``."""
    now, letter = time.time(), PREFIXES[product][1]
    plans = []
    for index in range(sessions):
        start_at = from_s + rng.uniform(0.0, window_s)
        plan, seq = SessionPlan(index, start_at, now + start_at, product=product), 0
        for batches, count in ((plan.pre, rng.randint(2, 3)), (plan.post, rng.randint(3, 5))):
            for _ in range(count):
                size = rng.randint(1, 3)
                batches.append([f"{letter}{index:04d}-a{seq + k:03d}" for k in range(size)])
                seq += size
        plans.append(plan)
    return plans


@dataclass
class Ledger:
    """What the senders got: accepted actions and link answers (thread-safe)."""

    accepted: dict[str, SessionPlan] = field(default_factory=dict)
    # When the 202 came (time.monotonic()), for post-link actions: their delivery latency.
    accepted_at: dict[str, float] = field(default_factory=dict)
    pre_link: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    unaccepted: set[str] = field(default_factory=set)
    link_answers: Counter[str] = field(default_factory=Counter)
    odd_links: list[dict[str, Any]] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    # Every 5xx answer: by status and error code, when (time.monotonic()), and those without
    # a Retry-After (a 503 must say when to come back).
    server_errors: Counter[str] = field(default_factory=Counter)
    refused_at: list[float] = field(default_factory=list)
    no_retry_after: int = 0
    sessions_done: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def batch(self, plan: SessionPlan, descriptions: list[str], *, pre: bool, ok: bool) -> None:
        at = time.monotonic()
        with self.lock:
            for d in descriptions:
                if ok:
                    self.accepted[d] = plan
                    if not pre:
                        self.accepted_at[d] = at
                else:
                    self.unaccepted.add(d)
            if ok and pre:
                self.pre_link[plan.session_id].update(descriptions)

    def link(self, plan: SessionPlan, status: str | None, trail: list[str]) -> None:
        with self.lock:
            self.link_answers[status or "gave_up"] += 1
            if status != "linked":
                # A retried webhook may rightly be a duplicate; it must still have linked.
                self.odd_links.append({"session_id": plan.session_id, "tries": trail})

    def count(self, outcome: str) -> None:
        with self.lock:
            self.requests[outcome] += 1

    def server_error(self, response: httpx.Response) -> None:
        try:
            error = str(response.json().get("error", "?"))
        except ValueError:
            error = "not_json"
        with self.lock:
            self.server_errors[f"{response.status_code} {error}"] += 1
            self.refused_at.append(time.monotonic())
            self.no_retry_after += "retry-after" not in response.headers


class Sender:
    """Posts like a real sender: 503s and connection errors are retried with backoff (honouring
    ``Retry-After``); a batch counts as accepted only on a 202, a webhook is sent until a 200."""

    def __init__(self, service: ServiceProcess, ledger: Ledger, start: float) -> None:
        self._service = service
        self._start = start
        self._ledger = ledger
        self._http = httpx.Client(timeout=SENDER_TIMEOUT_S)

    def close(self) -> None:
        self._http.close()

    def post_batch(self, plan: SessionPlan, descriptions: list[str]) -> bool:
        actions = [{"description": d, "timestamp_start": plan.timestamp(d)} for d in descriptions]
        body = {"session_id": plan.session_id, "actions": actions}
        headers = {"authorization": f"Bearer {INGEST_TOKEN}"}
        path = f"/actions/{plan.product}"
        r = self._send(lambda url: self._http.post(f"{url}{path}", json=body, headers=headers))
        return r is not None and r.status_code == 202

    def link(self, plan: SessionPlan, trail: list[str]) -> str | None:
        body = {
            "event": "conversation.created",
            "conversation_id": plan.conversation_id,
            "session_id": plan.session_id,
        }
        msg_id = f"msg_{plan.session_id}"  # one delivery, retried under the same id
        path = f"/chatbot-webhook/{plan.product}"

        def attempt(url: str) -> httpx.Response:
            raw, headers = signed_webhook(body, now=time.time(), msg_id=msg_id)
            return self._http.post(f"{url}{path}", content=raw, headers=headers)

        r = self._send(attempt, trail)
        return str(r.json()["status"]) if r is not None and r.status_code == 200 else None

    def _send(
        self, request: Callable[[str], httpx.Response], trail: list[str] | None = None
    ) -> httpx.Response | None:
        """Send until a final answer; ``trail`` collects each try's time and outcome."""
        deadline, backoff_s = time.monotonic() + SENDER_GIVE_UP_S, 0.1
        while True:
            at = time.monotonic() - self._start
            response, wait_s, outcome = self._try(request)
            if trail is not None:
                add_try(trail, at, outcome)
            if response is not None:
                return response
            if time.monotonic() > deadline:
                return None
            time.sleep(wait_s if wait_s is not None else backoff_s)
            backoff_s = min(2.0, backoff_s * 2)

    def _try(
        self, request: Callable[[str], httpx.Response]
    ) -> tuple[httpx.Response | None, float | None, str]:
        """One attempt: the final response, or None and the server's wait hint to retry."""
        url = self._service.url
        if url is None:
            return None, 0.1, "service_restarting"
        try:
            response = request(url)
        except httpx.TransportError as exc:
            self._ledger.count("transport_error")
            return None, None, type(exc).__name__
        outcome = f"http_{response.status_code}"
        self._ledger.count(outcome)
        if response.status_code >= 500:
            self._ledger.server_error(response)
        if response.status_code not in RETRY_STATUSES:
            return response, None, outcome
        hint = response.headers.get("retry-after", "")
        return None, min(float(hint), 5.0) if hint.isdigit() else None, outcome


def add_try(trail: list[str], at: float, outcome: str) -> None:
    """Append ``"<time> <outcome>"``, folding a run of equal outcomes into ``"... xN"``."""
    if trail and trail[-1].split(" ")[1] == outcome:
        first_at, _, *count = trail[-1].split(" ")
        times = int(count[0][1:]) + 1 if count else 2
        trail[-1] = f"{first_at} {outcome} x{times}"
    else:
        trail.append(f"{at:.2f}s {outcome}")


def session_traffic(
    plan: SessionPlan, sender: Sender, ledger: Ledger, rng: random.Random
) -> Iterator[float]:
    """Send one session's requests in order, yielding the pause before each next one."""
    for descriptions in plan.pre:
        ledger.batch(plan, descriptions, pre=True, ok=sender.post_batch(plan, descriptions))
        yield rng.uniform(0.05, 1.5)
    trail: list[str] = []
    ledger.link(plan, sender.link(plan, trail), trail)
    for descriptions in plan.post:
        yield rng.uniform(0.05, 1.5)
        ledger.batch(plan, descriptions, pre=False, ok=sender.post_batch(plan, descriptions))
    with ledger.lock:
        ledger.sessions_done += 1


class Scheduler:
    """Runs many sessions on a few threads: each session is a generator yielding its pauses,
    and only one thread advances a given session at a time, so its requests stay in order."""

    def __init__(self, start: float) -> None:
        self._start = start
        self._heap: list[tuple[float, int, Iterator[float]]] = []
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._active = 0
        self.errors = 0

    def add(self, at_s: float, job: Iterator[float]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (self._start + at_s, next(self._ids), job))
            self._cond.notify()

    def run(self, workers: int) -> list[threading.Thread]:
        threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
        for thread in threads:
            thread.start()
        return threads

    def _work(self) -> None:
        while (job := self._take()) is not None:
            pause = None
            try:
                pause = next(job, None)
            except Exception as exc:  # a broken session must not stall the others
                print(f"a session's traffic failed: {exc!r}", file=sys.stderr)
                with self._cond:
                    self.errors += 1
            finally:
                self._done(job, pause)

    def _done(self, job: Iterator[float], pause: float | None) -> None:
        with self._cond:
            self._active -= 1
            if pause is not None:
                heapq.heappush(self._heap, (time.monotonic() + pause, next(self._ids), job))
            self._cond.notify_all()

    def _take(self) -> Iterator[float] | None:
        with self._cond:
            while True:
                if not self._heap and self._active == 0:
                    return None
                if self._heap and self._heap[0][0] <= time.monotonic():
                    self._active += 1
                    return heapq.heappop(self._heap)[2]
                timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                self._cond.wait(timeout)


# -- faults ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """When a fault could have cut the service off between a confirmed note and its ack."""

    name: str
    start: float  # time.monotonic()
    end: float


@dataclass
class Chaos:
    """The running pieces and the faults applied to them."""

    start: float
    store: Store
    service: ServiceProcess
    bot: FakeBot  # the main and the throttled products' platform
    hang_bot: FakeBot  # the hanging product's
    windows: list[FaultWindow] = field(default_factory=list)
    hang: FaultWindow | None = None  # not a crash window: its posts are answered, late
    timeline: list[dict[str, Any]] = field(default_factory=list)
    failovers: list[dict[str, Any]] = field(default_factory=list)

    def note(self, message: str) -> None:
        log(self.start, message)
        self.timeline.append({"at_s": round(time.monotonic() - self.start, 2), "event": message})

    def kill_service(self) -> None:
        begun = time.monotonic()
        pid = self.service.kill()
        self.service.url = None  # until the new process is ready
        self.windows.append(FaultWindow("sigkill", begun, begun))
        self.note(f"SIGKILL service pid {pid}; starting a new process")
        self.service.start()
        took = time.monotonic() - begun
        self.note(
            f"service #{self.service.incarnation} ready at {self.service.url} after {took:.1f} s"
        )

    def fail_bot(self, seed: int) -> None:
        self.bot.fail_randomly(0.5, status=503, until=time.monotonic() + BOT_FAILURE_S, seed=seed)
        self.note(f"bot fails 50% of note posts with 503 for {BOT_FAILURE_S:.0f} s")

    def hang_platform(self, hang_s: float) -> None:
        begun = time.monotonic()
        self.hang_bot.delay(HANG_DELAY_S, until=begun + hang_s)
        self.hang = FaultWindow("hang", begun, begun + hang_s)
        held, lasts = f"{HANG_DELAY_S:.0f} s", f"{hang_s:.1f} s"
        self.note(f"{HANGING}'s platform holds every post {held} for the next {lasts}")

    def bot_for(self, product: str) -> FakeBot:
        return self.hang_bot if product == HANGING else self.bot

    def notes_of(self, product: str) -> list[Attempt]:
        """The product's notes its platform accepted, in the order they were answered."""
        return [n for n in self.bot_for(product).notes if n.payload.get("product_id") == product]

    def attempts_of(self, product: str) -> list[Attempt]:
        attempts = self.bot_for(product).attempts
        return [a for a in attempts if a.payload.get("product_id") == product]

    def throttle_bot(self) -> None:
        self.bot.throttle(THROTTLED_POSTS, THROTTLE_RETRY_AFTER_S)
        hint, n = THROTTLE_RETRY_AFTER_S, THROTTLED_POSTS
        self.note(f"bot answers 429 Retry-After: {hint} to the next {n} posts")

    def restart_redis(self) -> None:
        assert isinstance(self.store, RedisProcess)
        begun = time.monotonic()
        self.note(f"SIGTERM redis-server; down for {REDIS_DOWN_S:.0f} s")
        self.store.restart(down_s=REDIS_DOWN_S)
        self.windows.append(FaultWindow("redis_restart", begun, time.monotonic()))
        took, keys_after = time.monotonic() - begun, self.store.client.dbsize()
        self.note(f"redis-server back on its port and AOF after {took:.1f} s")
        self.note(f"redis holds {keys_after} keys after the restart")

    def kill_primary(self, session_ids: list[str], victim: str) -> None:
        """SIGKILL the primary holding ``victim``'s keys, wait until its replica is promoted,
        then start the dead node again: it rejoins as the new primary's replica (until then,
        with WAIT 1, writes to its slots cannot be confirmed and answer 503)."""
        assert isinstance(self.store, RedisClusterProcess)
        cluster, victim_key = self.store.cluster, keys.session_keys(PRODUCT, victim).state
        old = cluster.primary_of(victim_key)
        shards = self.store.shards_served_by(old)
        held = sum(keys.shard_of(PRODUCT, sid) in shards for sid in session_ids)
        begun = time.monotonic()
        cluster.kill_master_of(victim_key)
        self.note(
            f"SIGKILL cluster primary {old}: {len(shards)} of {keys.SHARDS} shards, "
            f"{held} of {len(session_ids)} sessions (among them {victim})"
        )
        new = cluster.wait_for_failover(victim_key, old, timeout_s=CLUSTER_WAIT_S)
        promoted = time.monotonic()
        wait, took = CLUSTER_REJOIN_AFTER_S, promoted - begun
        self.note(
            f"replica {new} promoted after {round(took, 2):.1f} s; restarting {old} in {wait:.0f} s"
        )
        time.sleep(wait)
        cluster.restart(old, timeout_s=CLUSTER_WAIT_S)
        back = time.monotonic()
        role, back_s = cluster.role(old), round(back - begun, 2)
        self.windows.append(FaultWindow("primary_kill", begun, back))
        self.note(f"{old} rejoined as {role} of {new} after {back_s:.1f} s; cluster ok")
        self.failovers.append(
            {
                "killed": old,
                "promoted": new,
                "shards": len(shards),
                "sessions": held,
                "killed_at_s": round(begun - self.start, 2),
                "failover_s": round(took, 2),
                "replica_back_s": back_s,
                "old_primary_role_after": role,
            }
        )

    def progress(self, ledger: Ledger, total: int) -> None:
        with ledger.lock:
            done, accepted = ledger.sessions_done, len(ledger.accepted)
        notes, due = len(self.bot.notes) + len(self.hang_bot.notes), due_count(self.store)
        status = f"{done}/{total} sessions done, {accepted} actions accepted, {notes} notes"
        log(self.start, f"{status}, {due} due")


def fault_schedule(
    chaos: Chaos, duration_s: float, seed: int, plans: list[SessionPlan]
) -> list[tuple[float, Callable[[], None]]]:
    events: list[tuple[float, Callable[[], None]]] = [
        (duration_s * f, chaos.kill_service) for f in (0.2, 0.4, 0.6, 0.8)
    ]
    failing_from = duration_s * 0.3
    ends = failing_from + BOT_FAILURE_S
    events += [
        (failing_from, lambda: chaos.fail_bot(seed)),
        (ends, lambda: chaos.note(f"bot failures ended at {ends:.1f} s")),
        (duration_s * 0.45, chaos.throttle_bot),
        (duration_s * 0.5, redis_fault(chaos, duration_s * 0.5, plans)),
    ]
    hang_from, hang_until = duration_s * HANG_FROM, duration_s * HANG_UNTIL
    events += [
        (hang_from, lambda: chaos.hang_platform(hang_until - hang_from)),
        (hang_until, lambda: chaos.note(f"{HANGING}'s platform answers at once again")),
    ]
    return sorted(events, key=lambda e: e[0])


def redis_fault(chaos: Chaos, at_s: float, plans: list[SessionPlan]) -> Callable[[], None]:
    """A Redis restart, or on a cluster the loss of the primary of a session in mid-traffic
    (the last one to start a second or more before the fault)."""
    if isinstance(chaos.store, RedisProcess):
        return chaos.restart_redis
    plans = [p for p in plans if p.product == PRODUCT]
    started = [p for p in plans if p.start_at <= at_s - 1.0] or plans
    victim = max(started, key=lambda p: p.start_at).session_id
    session_ids = [p.session_id for p in plans]
    return lambda: chaos.kill_primary(session_ids, victim)


def run_faults(
    chaos: Chaos,
    events: list[tuple[float, Callable[[], None]]],
    progress: Callable[[], None],
    until: Callable[[], bool],
) -> None:
    """Apply each fault at its time, with a progress line every few seconds, until traffic ends."""
    pending = list(events)
    next_progress = PROGRESS_EVERY_S
    while pending or not until():
        elapsed = time.monotonic() - chaos.start
        if pending and pending[0][0] <= elapsed:
            pending.pop(0)[1]()
        elif elapsed >= next_progress:
            progress()
            next_progress += PROGRESS_EVERY_S
        else:
            time.sleep(0.05)


def due_count(r: Store) -> int | None:
    """Sessions in the due queues of every shard (None while Redis does not answer)."""
    try:
        return sum(int(r.client.zcard(keys.due_key(k))) for k in range(keys.SHARDS))
    except (redis.RedisError, RedisClusterException):
        return None


def wait_for_drain(chaos: Chaos) -> bool:
    """Until the due queue is empty and the bot saw nothing new for a while."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    seen, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        count = len(chaos.bot.attempts) + len(chaos.hang_bot.attempts)
        if count != seen or due_count(chaos.store) != 0:
            seen, quiet_since = count, time.monotonic()
        elif time.monotonic() - quiet_since >= DRAIN_QUIET_S:
            return True
    return False


# -- accounting -----------------------------------------------------------------------------


def dead_lettered(r: Store, product: str) -> set[str]:
    entries = r.client.zrange(keys.dead_letter_key(product), 0, -1)
    return {str(a["description"]) for e in entries for a in json.loads(e).get("actions", [])}


def descriptions(note: Attempt) -> list[str]:
    return [str(a["description"]) for a in note.payload["actions"]]


def accepted_at(note: Attempt) -> float:
    """When the bot accepted the note (its answer; a held post is accepted late)."""
    return note.answered_at if note.answered_at is not None else note.received_at


def in_crash_window(first_at: float, again_at: float, windows: list[FaultWindow]) -> bool:
    return any(
        w.start - CRASH_SLACK_S <= first_at <= w.end + CRASH_SLACK_S and again_at >= w.start
        for w in windows
    )


def repeats(groups: dict[str, list[Attempt]], windows: list[FaultWindow]) -> tuple[int, int]:
    """Extra copies among the groups, and how many of them no crash window explains."""
    total = outside = 0
    for copies in groups.values():
        first, *again = sorted(copies, key=accepted_at)
        total += len(again)
        outside += sum(
            not in_crash_window(accepted_at(first), accepted_at(n), windows) for n in again
        )
    return total, outside


def duplicates(notes: list[Attempt], windows: list[FaultWindow]) -> dict[str, int]:
    by_id: dict[str, list[Attempt]] = defaultdict(list)
    by_action: dict[str, list[Attempt]] = defaultdict(list)
    for note in notes:
        by_id[note.webhook_id].append(note)
        for d in descriptions(note):
            by_action[d].append(note)
    notes_total, notes_outside = repeats(by_id, windows)
    actions_total, actions_outside = repeats(by_action, windows)
    return {
        "duplicate_notes": notes_total,
        "duplicate_notes_outside_crash_windows": notes_outside,
        "duplicate_actions": actions_total,
        "duplicate_actions_outside_crash_windows": actions_outside,
        "same_webhook_id_different_actions": len(changed_content(notes)),
    }


def changed_content(attempts: list[Attempt]) -> list[list[dict[str, Any]]]:
    """Posts sharing one webhook-id (one note, retried) that did not carry the same actions."""
    by_id: dict[str, list[Attempt]] = defaultdict(list)
    for attempt in attempts:
        by_id[attempt.webhook_id].append(attempt)
    return [
        [{"status": a.status, "actions": descriptions(a)} for a in group]
        for group in by_id.values()
        if len({tuple(descriptions(a)) for a in group}) > 1
    ]


def unlinked_sessions(chaos: Chaos, ledger: Ledger, product: str) -> list[str]:
    """The product's sessions whose link webhook got a 200 but that hold no conversation in
    Redis."""
    sessions = {plan.session_id for plan in ledger.accepted.values() if plan.product == product}
    return sorted(
        sid
        for sid in sessions
        if not chaos.store.client.hexists(keys.session_keys(product, sid).state, "conversation")
    )


def flush_first_violations(ledger: Ledger, notes: list[Attempt], product: str) -> int:
    """The product's sessions whose first note is not exactly their pre-link actions (the
    at-link flush)."""
    first: dict[str, Attempt] = {}
    for note in sorted(notes, key=lambda n: n.received_at):
        first.setdefault(str(note.payload["session_id"]), note)
    prefix = PREFIXES[product][0] + "-"
    return sum(
        sid not in first or set(descriptions(first[sid])) != actions
        for sid, actions in ledger.pre_link.items()
        if sid.startswith(prefix)
    )


def product_of(description: str) -> str:
    """The product whose traffic carries this action description (by its first letter)."""
    return next(p for p, (_, letter) in PREFIXES.items() if description.startswith(letter))


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile of sorted ``values``."""
    return values[max(0, min(len(values) - 1, math.ceil(q * len(values)) - 1))]


def latency(
    chaos: Chaos, ledger: Ledger, product: str, window: FaultWindow | None = None
) -> dict[str, Any]:
    """From a post-link batch's 202 to the first post of a note with its action at the
    product's platform, for the actions accepted within ``window`` (all when None)."""
    arrived: dict[str, float] = {}
    for note in chaos.notes_of(product):
        for d in descriptions(note):
            arrived[d] = min(arrived.get(d, math.inf), note.received_at)
    values = sorted(
        arrived[d] - at
        for d, at in ledger.accepted_at.items()
        if ledger.accepted[d].product == product
        and d in arrived
        and (window is None or window.start <= at <= window.end)
    )
    if not values:
        return {"actions": 0}
    return {
        "actions": len(values),
        "p50_s": round(percentile(values, 0.5), 3),
        "p99_s": round(percentile(values, 0.99), 3),
        "max_s": round(values[-1], 3),
    }


REDIS_FAULTS = frozenset({"redis_restart", "primary_kill"})


def refusals(chaos: Chaos, ledger: Ledger) -> dict[str, Any]:
    """The 5xx answers the senders saw, and how many of them a Redis fault explains; on a
    cluster, split into before the promotion (the slots had no primary) and after it (the
    promoted primary had no replica yet, so WAIT 1 could not succeed)."""
    faults = [w for w in chaos.windows if w.name in REDIS_FAULTS]
    phases: Counter[str] = Counter()
    for at in (at - chaos.start for at in ledger.refused_at):
        for f in chaos.failovers:
            killed, promoted = f["killed_at_s"], f["killed_at_s"] + f["failover_s"]
            if killed <= at < promoted:
                phases["no_primary"] += 1
            elif promoted <= at <= killed + f["replica_back_s"] + CRASH_SLACK_S:
                phases["no_replica"] += 1
    return {
        "sender_503s": ledger.requests["http_503"],
        "sender_503s_in_redis_faults": sum(
            any(w.start <= at <= w.end + CRASH_SLACK_S for w in faults) for at in ledger.refused_at
        ),
        "sender_503s_by_failover_phase": dict(phases),
        "server_errors": dict(ledger.server_errors),
        "server_errors_not_503": sum(
            n for answer, n in ledger.server_errors.items() if not answer.startswith("503 ")
        ),
        "refusals_without_retry_after": ledger.no_retry_after,
    }


def over_budget(chaos: Chaos, product: str, per_minute: int) -> dict[str, Any]:
    """How far the product's posts (failed ones too: each costs the budget) ever went past its
    budget's envelope: in any window of W seconds at most burst + W / interval posts."""
    burst, interval_s = max(1, per_minute // 10), 60 / per_minute
    times = sorted(a.received_at - chaos.start for a in chaos.attempts_of(product))
    worst, window = float(-burst), (0.0, 0.0)
    for i, j in itertools.combinations_with_replacement(range(len(times)), 2):
        over = j - i + 1 - burst - (times[j] - times[i]) / interval_s
        if over > worst:
            worst, window = over, (times[i], times[j])
    return {
        "per_minute": per_minute,
        "burst": burst,
        "posts": len(times),
        "most_posts_over_envelope": round(worst, 2) + 0.0,  # never "-0.0"
        "worst_window_s": [round(t, 2) for t in window],
    }


def account_product(chaos: Chaos, ledger: Ledger, product: str) -> dict[str, Any]:
    """One product's accounting: what was accepted, delivered, dead-lettered, lost, repeated."""
    notes = chaos.notes_of(product)
    delivered = {d for note in notes for d in descriptions(note)}
    accepted = {d for d, plan in ledger.accepted.items() if plan.product == product}
    unaccepted = {d for d in ledger.unaccepted if product_of(d) == product}
    dead = dead_lettered(chaos.store, product) & accepted
    missing = accepted - delivered - dead
    unlinked = unlinked_sessions(chaos, ledger, product)
    retried_changed = changed_content(chaos.attempts_of(product))
    return {
        "accepted": len(accepted),
        "delivered": len(accepted & delivered),
        "dead_lettered": len(dead),
        "lost": len(missing),
        **duplicates(notes, chaos.windows),
        "flush_not_first": flush_first_violations(ledger, notes, product),
        "notes": len(notes),
        "throttled": chaos.service.throttled[product],
        "budget": over_budget(chaos, product, CAPPED_PER_MINUTE) if product == CAPPED else {},
        "unaccepted_batches_actions": len(unaccepted),
        "delivered_but_never_accepted": len(delivered & unaccepted),
        "sessions_not_linked": unlinked,
        "lost_in_unlinked_sessions": sum(
            ledger.accepted[d].session_id in unlinked for d in missing
        ),
        "retries_with_changed_actions": len(retried_changed),
        "retries_with_changed_actions_sample": retried_changed[:3],
        "latency": latency(chaos, ledger, product),
        "latency_during_hang": latency(chaos, ledger, product, chaos.hang) if chaos.hang else {},
        "lost_sample": sorted(missing)[:20],
    }


def account(chaos: Chaos, ledger: Ledger) -> dict[str, Any]:
    """The main product's accounting at the top (the rows of the table), every product's
    under ``products``, and what the senders and the platforms saw."""
    products = {product: account_product(chaos, ledger, product) for product in PRODUCTS}
    main = {k: v for k, v in products[PRODUCT].items() if not k.startswith("latency")}
    return {
        **main,
        "dropped_by_policy": int(chaos.service.dropped_by_policy),
        "lost_all_products": sum(r["lost"] for r in products.values()),
        "products": products,
        "links": dict(ledger.link_answers),
        "links_not_answered_linked": ledger.odd_links,
        "requests": dict(ledger.requests),
        **refusals(chaos, ledger),
        "bot_answers": {str(k): v for k, v in sorted(chaos.bot.status_counts().items())},
        "hang_bot_answers": {str(k): v for k, v in sorted(chaos.hang_bot.status_counts().items())},
        "hang": hang_summary(chaos),
    }


def hang_summary(chaos: Chaos) -> dict[str, Any]:
    if chaos.hang is None:
        return {}
    return {
        "from_s": round(chaos.hang.start - chaos.start, 1),
        "until_s": round(chaos.hang.end - chaos.start, 1),
        "post_held_s": HANG_DELAY_S,
        "max_notes_in_flight": HANG_IN_FLIGHT,
        "most_posts_held_at_once": chaos.hang_bot.max_concurrent,
        "posts_abandoned_by_a_killed_sender": chaos.hang_bot.disconnected,
    }


def explain_lost(chaos: Chaos, ledger: Ledger, lost: list[str]) -> None:
    """Where the first few lost actions' sessions stand in Redis, for a root-cause hunt."""
    plans = {ledger.accepted[d].session_id: ledger.accepted[d] for d in lost}
    for sid in sorted(plans)[:5]:
        k = keys.session_keys(plans[sid].product, sid)
        state, pre, out = k.state, k.pre, k.out
        client = chaos.store.client
        due = client.zscore(k.due, k.member)
        print(f"  {sid}: state={client.hgetall(state)}")
        print(f"  {sid}: pre={client.zcard(pre)} out={client.zcard(out)} due={due}")
        print(f"  {sid}: unfiled dead letters={client.hlen(k.dead)} shard={k.shard}")
        if isinstance(chaos.store, RedisClusterProcess):
            print(f"  {sid}: served by {chaos.store.cluster.primary_of(state)}")


ROWS = (
    ("accepted", "actions answered 202"),
    ("delivered", "in a note the bot accepted"),
    ("dropped_by_policy", "pre-link window/cap (0 by design)"),
    ("dead_lettered", "in cb:dead:<product>"),
    ("lost", "none of the above: MUST be 0"),
    ("lost_in_unlinked_sessions", "of which: link webhook 200, session unlinked"),
    ("duplicate_notes", "same webhook-id accepted again"),
    ("duplicate_notes_outside_crash_windows", "MUST be 0"),
    ("duplicate_actions", "an action in a second note"),
    ("duplicate_actions_outside_crash_windows", "MUST be 0"),
    ("same_webhook_id_different_actions", "accepted twice under one id, other actions"),
    ("retries_with_changed_actions", "one webhook-id posted with other actions"),
    ("flush_not_first", "sessions whose first note is not the flush"),
    ("server_errors_not_503", "a 5xx other than 503: MUST be 0"),
)


def print_table(result: dict[str, Any]) -> None:
    print()
    for key, meaning in ROWS:
        print(f"  {key:<40} {result[key]:>7}   {meaning}")
    answers = result["bot_answers"]
    print(f"  notes: {result['notes']}, bot answers (to {PRODUCT} and {CAPPED}): {answers}")
    print(f"  link answers: {result['links']}, requests: {result['requests']}")
    print(
        f"  senders saw {result['sender_503s']} 503s ({result['sender_503s_in_redis_faults']}"
        f" during the Redis fault), 5xx answers: {result['server_errors']}"
    )
    for failover in result.get("failovers", []):
        print(
            f"  failover: primary {failover['killed']} SIGKILLed ({failover['shards']} shards,"
            f" {failover['sessions']} sessions), {failover['promoted']} promoted after"
            f" {failover['failover_s']:.1f} s, old primary back as"
            f" {failover['old_primary_role_after']} after {failover['replica_back_s']:.1f} s"
        )
    if result.get("failovers"):
        phases = result["sender_503s_by_failover_phase"]
        print(
            f"  503s while the slots had no primary: {phases.get('no_primary', 0)},"
            f" while the promoted primary had no replica: {phases.get('no_replica', 0)}"
        )
    for odd in result["links_not_answered_linked"]:
        print(f"  link webhook of {odd['session_id']}: {', '.join(odd['tries'])}")
    if result["sessions_not_linked"]:
        print(f"  sessions not linked at the end: {result['sessions_not_linked']}")
    if (
        result["duplicate_notes_outside_crash_windows"]
        or result["duplicate_actions_outside_crash_windows"]
    ):
        print("  WARNING: duplicates outside crash windows (at-least-once allows them only there)")
    if result["server_errors_not_503"] or result["refusals_without_retry_after"]:
        print("  WARNING: a 5xx other than 503, or a 5xx without Retry-After (see server_errors)")
    print_products(result)


def seconds(stats: dict[str, Any], key: str) -> str:
    return f"{stats[key]:.2f}" if key in stats else "-"


def print_products(result: dict[str, Any]) -> None:
    """Every product's accounting in one table, the hang, and the latency while it lasted."""
    print()
    print(
        f"  {'product':<14} {'accepted':>8} {'delivered':>9} {'dead':>5} {'lost':>5}"
        f" {'dup outside':>11} {'notes':>6} {'throttled':>9}   post-link latency p50/p99/max"
    )
    for product, r in result["products"].items():
        outside = (
            r["duplicate_notes_outside_crash_windows"]
            + r["duplicate_actions_outside_crash_windows"]
        )
        stats = r["latency"]
        spread = "/".join(seconds(stats, k) for k in ("p50_s", "p99_s", "max_s"))
        print(
            f"  {product:<14} {r['accepted']:>8} {r['delivered']:>9} {r['dead_lettered']:>5}"
            f" {r['lost']:>5} {outside:>11} {r['notes']:>6} {r['throttled']:>9}   {spread} s"
        )
    budget = result["products"][CAPPED]["budget"]
    print(
        f"  {CAPPED}'s budget: {budget['per_minute']} notes a minute, burst {budget['burst']};"
        f" {budget['posts']} posts; the most in any window of w seconds, past burst + w /"
        f" {60 / budget['per_minute']:g} s: {budget['most_posts_over_envelope']} (under 1: jitter),"
        f" from {budget['worst_window_s'][0]:.1f} s to {budget['worst_window_s'][1]:.1f} s"
    )
    hang = result["hang"]
    if not hang:
        return
    print(
        f"  {HANGING}'s platform held every post {hang['post_held_s']:.0f} s from"
        f" {hang['from_s']:.1f} s to {hang['until_s']:.1f} s: at most"
        f" {hang['most_posts_held_at_once']} held at once (max_notes_in_flight"
        f" {hang['max_notes_in_flight']}), {hang['posts_abandoned_by_a_killed_sender']} abandoned"
        f" by a killed process; answers {result['hang_bot_answers']}"
    )
    during = []
    for product, r in result["products"].items():
        stats = r["latency_during_hang"]
        if not stats.get("actions"):
            during.append(f"{product}: no post-link actions accepted during the hang")
            continue
        during.append(
            f"{product} p50 {seconds(stats, 'p50_s')} s, p99 {seconds(stats, 'p99_s')} s,"
            f" max {seconds(stats, 'max_s')} s ({stats['actions']} actions)"
        )
    print("  post-link latency of the actions accepted during the hang:")
    for line in during:
        print(f"    {line}")
    if any(r["lost"] for r in result["products"].values()):
        print("  WARNING: a product lost actions (see products.<id>.lost_sample in the results)")


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--topology",
        choices=(*TOPOLOGIES, "both"),
        default="both",
        help="which Redis to run against (default: both, standalone first)",
    )
    parser.add_argument(
        "--cluster",
        dest="topology",
        action="store_const",
        const="cluster",
        help="the cluster variant only (= --topology cluster)",
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=8, help="sender threads")
    return parser.parse_args(argv)


def traffic_plans(args: argparse.Namespace) -> list[tuple[SessionPlan, random.Random]]:
    """Every session to play, each with the generator of its pauses: the main product's
    (``--sessions``, over the first 80 % of the run), the throttled product's (a tenth as
    many, spread the same way) and the hanging product's (a quarter as many, starting from a
    second before its platform hangs to 3 s before the hang ends, so their notes fall in it).
    Each product draws from its own generator: the main traffic is the same as without them."""
    window_s = args.duration * 0.8
    rng = random.Random(args.seed)
    plans = plan_sessions(rng, sessions=args.sessions, window_s=window_s)
    jobs = [(plan, random.Random(rng.random())) for plan in plans]
    capped_rng = random.Random(f"{args.seed}-{CAPPED}")
    capped = plan_sessions(
        capped_rng,
        sessions=max(1, args.sessions // CAPPED_SHARE),
        window_s=window_s,
        product=CAPPED,
    )
    jobs += [(plan, random.Random(capped_rng.random())) for plan in capped]
    hang_rng = random.Random(f"{args.seed}-{HANGING}")
    hang_from = max(0.0, args.duration * HANG_FROM - 1.0)
    hanging = plan_sessions(
        hang_rng,
        sessions=max(1, args.sessions // HANG_SHARE),
        window_s=max(0.5, args.duration * HANG_UNTIL - 3.0 - hang_from),
        product=HANGING,
        from_s=hang_from,
    )
    jobs += [(plan, random.Random(hang_rng.random())) for plan in hanging]
    return jobs


def drive(chaos: Chaos, args: argparse.Namespace) -> Ledger:
    """Send the traffic while the faults happen; returns what the senders got."""
    jobs = traffic_plans(args)
    plans = [plan for plan, _ in jobs]
    ledger = Ledger()
    sender = Sender(chaos.service, ledger, chaos.start)
    scheduler = Scheduler(chaos.start)
    for plan, rng in jobs:
        scheduler.add(plan.start_at, session_traffic(plan, sender, ledger, rng))
    threads = scheduler.run(args.workers)
    run_faults(
        chaos,
        fault_schedule(chaos, args.duration, args.seed, plans),
        progress=lambda: chaos.progress(ledger, len(plans)),
        until=lambda: not any(t.is_alive() for t in threads),
    )
    sender.close()
    if scheduler.errors:
        chaos.note(f"{scheduler.errors} session(s) stopped on an unexpected error")
    return ledger


def finish(chaos: Chaos, ledger: Ledger, args: argparse.Namespace, topology: str) -> dict[str, Any]:
    chaos.note("traffic done; waiting for the due queue to drain")
    drained = wait_for_drain(chaos)
    chaos.note("drained" if drained else f"NOT drained after {DRAIN_TIMEOUT_S:.0f} s")
    chaos.service.stop()
    result = account(chaos, ledger)
    for product in result["products"].values():
        if product["lost"]:
            explain_lost(chaos, ledger, product["lost_sample"])
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "topology": topology,
        "options": {**vars(args), "topology": topology},
        "drained": drained,
        "runtime_s": round(time.monotonic() - chaos.start, 1),
        "service_incarnations": chaos.service.incarnation,
        **result,
        "failovers": chaos.failovers,
        "faults": chaos.timeline,
    }


def run(args: argparse.Namespace, workdir: Path, topology: str) -> dict[str, Any]:
    store: Store = RedisClusterProcess(workdir) if topology == "cluster" else RedisProcess(workdir)
    env = CLUSTER_ENV if topology == "cluster" else {}
    store.start()
    try:
        with running_bot(HTTP_SECRET) as bot, running_bot(HTTP_SECRET) as hang_bot:
            products_file = workdir / "products.toml"
            products_file.write_text(
                PRODUCTS_TOML.format(
                    url=bot.url,
                    hang_url=hang_bot.url,
                    capped_per_minute=CAPPED_PER_MINUTE,
                    hang_in_flight=HANG_IN_FLIGHT,
                )
            )
            service = ServiceProcess(
                redis_url=store.url, products_file=products_file, log_dir=workdir, env=env
            )
            service.start()
            chaos = Chaos(time.monotonic(), store, service, bot, hang_bot)
            chaos.note(f"{store.describe()}, bot {bot.url}, {HANGING}'s bot {hang_bot.url}")
            settings = "".join(f" {k}={v}" for k, v in env.items())
            chaos.note(f"service #1 at {service.url}{settings}; traffic starts")
            try:
                ledger = drive(chaos, args)
                return finish(chaos, ledger, args, topology)
            finally:
                service.stop()
    finally:
        store.stop()


def run_topology(args: argparse.Namespace, topology: str) -> bool:
    """One variant, its tables and its results file; True when no product lost anything."""
    print(f"=== chaos on {topology} Redis ===", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"chaos-{topology}-"))
    result = run(args, workdir, topology)
    results_file = RESULTS_FILES[topology]
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    ok = result["lost_all_products"] == 0 and result["drained"]
    if ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        kept = "the Redis AOF" if topology == "standalone" else "the cluster nodes' log tails"
        print(f"\nFAILED ({topology}): service logs and {kept} are kept in {workdir}")
    print(f"results written to {results_file.relative_to(REPO_ROOT)}\n", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    topologies = TOPOLOGIES if args.topology == "both" else (args.topology,)
    begun = time.monotonic()
    outcomes = {topology: run_topology(args, topology) for topology in topologies}
    summary = ", ".join(f"{t} {'ok' if ok else 'FAILED'}" for t, ok in outcomes.items())
    print(f"chaos: {summary} ({time.monotonic() - begun:.0f} s)")
    return 0 if all(outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
