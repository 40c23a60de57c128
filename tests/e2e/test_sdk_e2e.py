"""The real service (``python -m app serve``) with payloads the event pipeline's SDK produces."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from autoplay_sdk.core.models import ActionsPayload, SlimAction

from app.security import decode_whsec, standard_webhook_headers
from tests.conftest import HTTP_SECRET, INGEST_TOKEN, WEBHOOK_SECRET, batch
from tests.e2e.service import Bridge, bridge
from tests.fakes.bot import FakeBot

T0 = 1_705_322_090.0  # 2024-01-15 12:34:50 UTC
QUIET_S = 0.6  # long enough for a note that should not exist to show up

PRODUCTS_TOML = """
[products.acme]
platform = "http"
ingest_token = "{token}"
post_link_debounce_s = 0.2
post_link_max_wait_s = 2.0
bin_seconds = 3

[products.acme.http]
url = "{url}"
signing_secret = "{signing}"
webhook_secret = "{webhook}"
"""


@pytest.fixture
def service(clean_redis: str, tmp_path: Path, bot: FakeBot) -> Iterator[Bridge]:
    products = tmp_path / "products.toml"
    products.write_text(
        PRODUCTS_TOML.format(
            token=INGEST_TOKEN, url=bot.url, signing=HTTP_SECRET, webhook=WEBHOOK_SECRET
        )
    )
    with bridge(
        redis_url=clean_redis, products_file=products, log_path=tmp_path / "bridge.log"
    ) as running:
        yield running


@pytest.mark.timeout(60)
def test_zero_timestamps_take_forwarded_at_not_1970(service: Bridge, bot: FakeBot) -> None:
    payload = ActionsPayload(
        product_id="acme",
        session_id="s1",
        user_id=None,
        email=None,
        # timestamp_start is left at the SDK's default, 0.0.
        actions=[
            SlimAction(title="Home", description="opened Home", canonical_url="/home"),
            SlimAction(title="", description="clicked Export", canonical_url=""),
        ],
        count=2,
        forwarded_at=T0 + 0.75,
    )
    raw = json.dumps(dataclasses.asdict(payload)).encode()
    headers = {"authorization": f"Bearer {INGEST_TOKEN}", "content-type": "application/json"}
    r = service.client.post("/actions/acme", content=raw, headers=headers)
    assert r.status_code == 202, r.text
    assert r.json() == {"status": "accepted", "accepted": 2, "duplicates": 0, "linked": False}

    service.link("acme", "s1", "c1")
    (delivered,) = bot.wait_for_notes(1, timeout_s=5)
    time.sleep(QUIET_S)
    assert len(bot.notes) == 1
    assert delivered.payload["body"] == (
        "session_id: s1\ntimestamp: 2024-01-15 12:34:50 UTC\n\n[1] opened Home\n[2] clicked Export"
    )
    assert [a["timestamp_start"] for a in delivered.payload["actions"]] == [T0 + 0.75] * 2


@pytest.mark.timeout(60)
def test_lone_surrogate_in_a_webhook_is_a_client_error(service: Bridge, bot: FakeBot) -> None:
    raw = b'{"event": "conversation.created", "conversation_id": "\\ud800", "session_id": "s1"}'
    # The same bytes json.dumps writes for a str holding a lone surrogate.
    event = {"event": "conversation.created", "conversation_id": "\ud800", "session_id": "s1"}
    assert json.dumps(event).encode() == raw
    signature = standard_webhook_headers(
        decode_whsec(WEBHOOK_SECRET), msg_id="msg_surrogate", timestamp=int(time.time()), body=raw
    )
    headers = {**signature, "content-type": "application/json"}

    r = service.client.post("/chatbot-webhook/acme", content=raw, headers=headers)
    assert 400 <= r.status_code < 500, r.text
    error = r.json()
    assert isinstance(error["error"], str) and error["error"]

    assert service.client.get("/healthz").status_code == 200
    # Still serving: a valid event links the session and its note goes out.
    service.link("acme", "s1", "c1")
    r = service.post_batch("acme", batch("s1", ("A", T0)))
    assert r.status_code == 202, r.text
    assert r.json()["linked"] is True
    (delivered,) = bot.wait_for_notes(1, timeout_s=5)
    assert delivered.payload["conversation_id"] == "c1"
