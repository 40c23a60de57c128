"""A Redis Cluster primary killed under traffic: its replica is promoted, the service carries on
by itself, requests answer 503 with Retry-After while the slot has no primary (and, with
``BRIDGE_REDIS_WAIT_REPLICAS=1``, until the promoted primary has a replica again), and every
action the service acknowledged is delivered."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.store import keys
from tests.cluster import LocalRedisCluster
from tests.conftest import HTTP_SECRET, INGEST_TOKEN, WEBHOOK_SECRET
from tests.e2e.service import Bridge, bridge
from tests.fakes.bot import FakeBot

PRODUCT = "failover"
SESSIONS = 24
SENDERS = 4
T0 = 1_705_322_090.0
TRAFFIC_BEFORE_S = 1.0
TRAFFIC_AFTER_S = 1.5
DELIVERY_TIMEOUT_S = 30.0

PRODUCTS = f"""
[products.{PRODUCT}]
platform = "http"
ingest_token = "{INGEST_TOKEN}"
post_link_debounce_s = 0.1
post_link_max_wait_s = 1.0

[products.{PRODUCT}.http]
url = "{{url}}"
signing_secret = "{HTTP_SECRET}"
webhook_secret = "{WEBHOOK_SECRET}"
"""


@dataclass
class Traffic:
    """What the senders saw: actions acknowledged, and every refusal on the way."""

    accepted: list[str] = field(default_factory=list)
    refusals: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def refused(self, response: Any) -> None:
        """A 503 must say when to come back and what is wrong; anything else is a problem."""
        body = response.json()
        with self.lock:
            if response.status_code != 503 or "retry-after" not in response.headers:
                self.problems.append(f"{response.status_code} {response.headers} {body}")
            self.refusals[body.get("error", "?")] += 1


def send_until_accepted(service: Bridge, body: dict[str, Any], traffic: Traffic) -> None:
    """What a pipeline does: the same request again after a 503, until it is accepted."""
    while True:
        r = service.post_batch(PRODUCT, body)
        if r.status_code == 202:
            return
        traffic.refused(r)
        time.sleep(0.05)


def link_until_linked(service: Bridge, session_id: str, traffic: Traffic) -> None:
    body = {"event": "conversation.created", "conversation_id": f"c-{session_id}"}
    while True:
        r = service.post_webhook(PRODUCT, {**body, "session_id": session_id})
        if r.status_code == 200:
            assert r.json()["status"] in ("linked", "already_linked", "duplicate")
            return
        traffic.refused(r)
        time.sleep(0.05)


def sender(service: Bridge, sessions: list[str], traffic: Traffic, stop: threading.Event) -> None:
    # A client of its own: an httpx client's connection pool is not shared across threads.
    with httpx.Client(base_url=service.client.base_url, timeout=10.0) as client:
        send_batches(dataclasses.replace(service, client=client), sessions, traffic, stop)


def send_batches(
    service: Bridge, sessions: list[str], traffic: Traffic, stop: threading.Event
) -> None:
    n = 0
    while not stop.is_set():
        for sid in sessions:
            descriptions = [f"{sid}-a{n:04d}", f"{sid}-a{n + 1:04d}"]
            actions = [
                {"description": d, "timestamp_start": T0 + n + i}
                for i, d in enumerate(descriptions)
            ]
            send_until_accepted(service, {"session_id": sid, "actions": actions}, traffic)
            with traffic.lock:
                traffic.accepted += descriptions
        n += 2


def delivered(bot: FakeBot) -> Counter[str]:
    return Counter(str(a["description"]) for note in bot.notes for a in note.payload["actions"])


@pytest.mark.timeout(120)
def test_a_primary_killed_under_traffic_loses_nothing_acknowledged(
    failover_cluster: LocalRedisCluster, bot: FakeBot, tmp_path: Path
) -> None:
    cluster = failover_cluster
    products_file = tmp_path / "products.toml"
    products_file.write_text(PRODUCTS.format(url=bot.url))
    sessions = [f"fo-{i:02d}" for i in range(SESSIONS)]
    victim_key = keys.session_keys(PRODUCT, sessions[0]).state
    traffic, stop = Traffic(), threading.Event()

    with bridge(
        redis_url=cluster.url,
        products_file=products_file,
        log_path=tmp_path / "bridge.log",
        BRIDGE_REDIS_CLUSTER="true",
        BRIDGE_REDIS_WAIT_REPLICAS="1",
    ) as service:
        for sid in sessions:
            link_until_linked(service, sid, traffic)
        threads = [
            threading.Thread(target=sender, args=(service, sessions[i::SENDERS], traffic, stop))
            for i in range(SENDERS)
        ]
        for thread in threads:
            thread.start()
        try:
            time.sleep(TRAFFIC_BEFORE_S)
            old_primary = cluster.kill_master_of(victim_key)
            new_primary = cluster.wait_for_failover(victim_key, old_primary)
            # The promoted primary has no replica until the dead node is back (an orchestrator
            # restarts it): until then WAIT 1 cannot succeed and its slots answer 503.
            cluster.restart(old_primary)  # it rejoins as a replica of the promoted node
            time.sleep(TRAFFIC_AFTER_S)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)

        expected = set(traffic.accepted)
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while not expected <= set(delivered(bot)) and time.monotonic() < deadline:
            time.sleep(0.1)
        ready = service.client.get("/readyz").status_code

    lost = sorted(expected - set(delivered(bot)))
    print(
        f"failover {old_primary} -> {new_primary}: {len(expected)} actions acknowledged, "
        f"refusals {dict(traffic.refusals)}, lost {len(lost)}, "
        f"repeated {sum(c - 1 for c in delivered(bot).values() if c > 1)}"
    )
    assert traffic.problems == []
    assert traffic.refusals["store_unavailable"] > 0, "no request met the dead primary"
    assert lost == [], f"{len(lost)} acknowledged actions never delivered: {lost[:10]}"
    assert ready == 200  # the service recovered without a restart
    assert cluster.primary_of(victim_key) == new_primary
