"""The real service (``python -m app serve``) over a real Redis, posting to a fake Zendesk.

From an action batch, through a signed Zendesk event whose requester the service looks up,
to the private comment on the ticket.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import INGEST_TOKEN, batch
from tests.e2e.service import REPO_ROOT, bridge
from tests.fakes.zendesk import FakeZendesk, running_zendesk, signed_headers

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "zendesk"
# Long enough for a comment that should not exist to show up (debounce 0.2 s plus a worker turn).
QUIET_S = 0.6
T0 = 1_705_322_090.0  # 2024-01-15 12:34:50 UTC; a 3-second bin starts at T0 + 1

EMAIL = "bot@globex.example"
API_TOKEN = "e2e-zendesk-api-token"
WEBHOOK_SECRET = "e2e-zendesk-webhook-secret"
BASIC = "Basic " + base64.b64encode(f"{EMAIL}/token:{API_TOKEN}".encode()).decode()
REQUESTER_ID = "26310245981713"
TICKET_ID = "48213"

PRODUCTS_TOML = """
[products.globex]
platform = "zendesk"
ingest_token = "{token}"
post_link_debounce_s = 0.2
post_link_max_wait_s = 2.0
bin_seconds = 3

[products.globex.zendesk]
api_base = "{api_base}"
email = "{email}"
api_token = "{api_token}"
webhook_secret = "{secret}"
"""


def event(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


@pytest.fixture
def zendesk() -> Iterator[FakeZendesk]:
    with running_zendesk(BASIC) as fake:
        fake.add_user(REQUESTER_ID, external_id="ext-1", email="dana.whitfield@example.com")
        yield fake


@pytest.fixture
def service(clean_redis: str, zendesk: FakeZendesk, tmp_path: Path) -> Iterator[httpx.Client]:
    """The running service, on a flushed Redis; its log is printed if the test fails."""
    products_file = tmp_path / "products.toml"
    products_file.write_text(
        PRODUCTS_TOML.format(
            token=INGEST_TOKEN,
            api_base=zendesk.url,
            email=EMAIL,
            api_token=API_TOKEN,
            secret=WEBHOOK_SECRET,
        )
    )
    with bridge(
        redis_url=clean_redis, products_file=products_file, log_path=tmp_path / "bridge.log"
    ) as running:
        yield running.client


def post_batch(service: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    headers = {"authorization": f"Bearer {INGEST_TOKEN}"}
    return service.post("/actions/globex", json=body, headers=headers)


def post_event(service: httpx.Client, body: bytes) -> httpx.Response:
    headers = signed_headers(body, secret=WEBHOOK_SECRET, when=time.time())
    return service.post("/chatbot-webhook/globex", content=body, headers=headers)


@pytest.mark.timeout(20)
def test_ticket_created_for_a_known_user_gets_one_private_comment(
    service: httpx.Client, zendesk: FakeZendesk
) -> None:
    r = post_batch(
        service, batch("s-zd-1", ("A", T0), ("B", T0 + 0.5), ("C", T0 + 1.2), user_id="ext-1")
    )
    assert r.status_code == 202, r.text
    assert r.json()["linked"] is False

    r = post_event(service, event("event_ticket_created"))
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "linked", "session_id": "s-zd-1", "conversation_id": TICKET_ID}

    (comment,) = zendesk.wait_for_comments(1, timeout_s=5)
    time.sleep(QUIET_S)
    assert len(zendesk.comments) == 1
    assert comment.ticket_id == TICKET_ID
    assert comment.public is False
    assert comment.body == (
        "session_id: s-zd-1\ntimestamp: 2024-01-15 12:34:50 UTC\n\n[1] A\n[2] B\n\n[3] C"
    )
    assert zendesk.calls("users") == 1
    assert zendesk.unauthorized == 0

    # Zendesk reports our own comment back as comment_added by the API user (an agent).
    echo = json.loads(event("event_comment_added_private_note"))
    echo["event"]["comment"].update(id=str(comment.comment_id), body=comment.body)
    r = post_event(service, json.dumps(echo).encode())
    assert r.json()["status"] == "ignored"


@pytest.mark.timeout(20)
def test_a_rate_limited_comment_is_posted_once_after_retry_after(
    service: httpx.Client, zendesk: FakeZendesk
) -> None:
    zendesk.fail_next("tickets", 1, status=429, retry_after="1")
    assert post_batch(service, batch("s-zd-2", ("X", T0), user_id="ext-1")).status_code == 202
    started = time.monotonic()
    r = post_event(service, event("event_ticket_created"))
    assert r.json()["status"] == "linked", r.text

    (comment,) = zendesk.wait_for_comments(1, timeout_s=6)
    assert time.monotonic() - started >= 1.0
    time.sleep(QUIET_S)
    assert len(zendesk.comments) == 1
    assert zendesk.calls("tickets") == 2
    assert comment.body == "session_id: s-zd-2\ntimestamp: 2024-01-15 12:34:50 UTC\n\n[1] X"
