"""BRIDGE_ROLE: an ``api`` process takes the requests and a ``worker`` process posts the notes,
over one Redis (a server, then a cluster); a worker serves only its probes and metrics, and
hears of new work from the api at once rather than at its next sweep of the due queues."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from app.store import keys
from tests.conftest import HTTP_SECRET, INGEST_TOKEN, WEBHOOK_SECRET, batch
from tests.e2e.conftest import Store
from tests.e2e.service import bridge
from tests.fakes.bot import FakeBot

T0 = 1_705_322_090.0
DEBOUNCE_S = 0.1
# Far longer than a note may take: a note found only by a sweep would come this late.
WORKER_POLL_S = 10
PROMPT_S = 1.5
PRODUCTS = f"""
[products.acme]
platform = "http"
ingest_token = "{INGEST_TOKEN}"
post_link_debounce_s = {DEBOUNCE_S}

[products.acme.http]
url = "{{url}}"
signing_secret = "{HTTP_SECRET}"
webhook_secret = "{WEBHOOK_SECRET}"
"""


def wait_for_notes(bot: FakeBot, count: int, since: float) -> float:
    """Seconds from ``since`` until the bot holds ``count`` notes."""
    deadline = since + WORKER_POLL_S
    while len(bot.notes) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(bot.notes) >= count, f"{len(bot.notes)} of {count} notes arrived"
    return time.monotonic() - since


def subscribers(store: Store) -> int:
    """Subscribers of the wake channel, over every node of a cluster."""
    if store.cluster is None:
        client = redis.Redis.from_url(store.url)
        try:
            return sum(count for _, count in client.pubsub_numsub(keys.WAKE_CHANNEL))
        finally:
            client.close()
    return sum(
        count
        for node in store.cluster.get_nodes()
        for _, count in store.cluster.pubsub_numsub(keys.WAKE_CHANNEL, target_nodes=node)
    )


def wait_until_subscribed(store: Store) -> None:
    deadline = time.monotonic() + 10
    while subscribers(store) == 0:
        assert time.monotonic() < deadline, "the worker never subscribed to the wake channel"
        time.sleep(0.02)


@pytest.mark.timeout(90)
def test_an_api_process_and_a_worker_process_deliver_together(
    store: Store, bot: FakeBot, tmp_path: Path
) -> None:
    products_file = tmp_path / "products.toml"
    products_file.write_text(PRODUCTS.format(url=bot.url))
    common = {"redis_url": store.url, "products_file": products_file, **store.env}
    with (
        bridge(log_path=tmp_path / "api.log", BRIDGE_ROLE="api", **common) as api,  # type: ignore[arg-type]
        bridge(
            log_path=tmp_path / "worker.log",
            BRIDGE_ROLE="worker",
            BRIDGE_WORKER_POLL_S=str(WORKER_POLL_S),
            **common,  # type: ignore[arg-type]
        ) as worker,
    ):
        wait_until_subscribed(store)  # an announcement made before it would go unheard
        # The worker takes no requests: intake is the api's.
        assert worker.post_batch("acme", batch("s1", ("A", T0))).status_code == 404
        assert worker.client.get("/healthz").status_code == 200
        assert worker.client.get("/readyz").status_code == 200
        assert "bridge_due_sessions" in worker.client.get("/metrics").text

        assert api.post_batch("acme", batch("s1", ("A", T0), ("B", T0 + 1))).status_code == 202
        linked_at = time.monotonic()
        api.link("acme", "s1", "c1")
        flush_s = wait_for_notes(bot, 1, linked_at)
        sent_at = time.monotonic()
        assert api.post_batch("acme", batch("s1", ("C", T0 + 5))).status_code == 202
        debounced_s = wait_for_notes(bot, 2, sent_at)
        time.sleep(0.5)  # a third copy would show up by now
        api_log, worker_log = api.log_events(), worker.log_events()

    assert flush_s < PROMPT_S and debounced_s < DEBOUNCE_S + PROMPT_S, (flush_s, debounced_s)
    assert [[a["description"] for a in n.payload["actions"]] for n in bot.notes] == [
        ["A", "B"],
        ["C"],
    ]
    assert not any('"note_delivered"' in line for line in api_log)  # the api posts nothing
    assert any('"note_delivered"' in line for line in worker_log)
    assert any('"role": "worker"' in line for line in worker_log)
