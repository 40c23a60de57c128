"""BRIDGE_ROLE: an ``api`` process takes the requests and a ``worker`` process posts the notes,
over one Redis; a worker serves only its probes and metrics."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import HTTP_SECRET, INGEST_TOKEN, WEBHOOK_SECRET, batch
from tests.e2e.service import bridge
from tests.fakes.bot import FakeBot

T0 = 1_705_322_090.0
PRODUCTS = f"""
[products.acme]
platform = "http"
ingest_token = "{INGEST_TOKEN}"
post_link_debounce_s = 0.1

[products.acme.http]
url = "{{url}}"
signing_secret = "{HTTP_SECRET}"
webhook_secret = "{WEBHOOK_SECRET}"
"""


@pytest.mark.timeout(60)
def test_an_api_process_and_a_worker_process_deliver_together(
    clean_redis: str, bot: FakeBot, tmp_path: Path
) -> None:
    products_file = tmp_path / "products.toml"
    products_file.write_text(PRODUCTS.format(url=bot.url))
    common = {"redis_url": clean_redis, "products_file": products_file}
    with (
        bridge(log_path=tmp_path / "api.log", BRIDGE_ROLE="api", **common) as api,  # type: ignore[arg-type]
        bridge(log_path=tmp_path / "worker.log", BRIDGE_ROLE="worker", **common) as worker,  # type: ignore[arg-type]
    ):
        # The worker takes no requests: intake is the api's.
        assert worker.post_batch("acme", batch("s1", ("A", T0))).status_code == 404
        assert worker.client.get("/healthz").status_code == 200
        assert worker.client.get("/readyz").status_code == 200
        assert "bridge_due_sessions" in worker.client.get("/metrics").text

        assert api.post_batch("acme", batch("s1", ("A", T0), ("B", T0 + 1))).status_code == 202
        api.link("acme", "s1", "c1")
        deadline = time.monotonic() + 10
        while not bot.notes and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a second copy would show up by now

        api_log, worker_log = api.log_events(), worker.log_events()
    (note,) = bot.notes
    assert [a["description"] for a in note.payload["actions"]] == ["A", "B"]
    assert not any('"note_delivered"' in line for line in api_log)  # the api posts nothing
    assert any('"note_delivered"' in line for line in worker_log)
    assert any('"role": "worker"' in line for line in worker_log)
