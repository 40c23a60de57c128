"""The real service (``python -m app serve``) over a real Redis, posting to a fake Salesforce.

From an action batch, through a Flow's ``case.created`` callout carrying the session id, to the
private case comments: one for a short note, several in order for a long one, and a token that
expired on the way fetched again exactly once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import INGEST_TOKEN, batch
from tests.e2e.service import bridge
from tests.fakes.salesforce import FakeSalesforce, running_salesforce, webhook_headers

# Long enough for a comment that should not exist to show up (debounce 0.2 s plus a worker turn).
QUIET_S = 0.6
T0 = 1_705_322_090.0  # 2024-01-15 12:34:50 UTC; a 3-second bin starts at T0 + 1

CLIENT_ID = "3MVG9e2e.fake.connected.app.consumer.key"
CLIENT_SECRET = "e2e-salesforce-consumer-secret"
WEBHOOK_TOKEN = "e2e-salesforce-bridge-token"
CASE_ID = "500Hs00001XyZaBIAV"

PRODUCTS_TOML = """
[products.globex]
platform = "salesforce"
ingest_token = "{token}"
post_link_debounce_s = 0.2
post_link_max_wait_s = 2.0
bin_seconds = 3

[products.globex.salesforce]
instance_url = "{instance_url}"
client_id = "{client_id}"
client_secret = "{client_secret}"
webhook_token = "{webhook_token}"
"""


@pytest.fixture
def salesforce() -> Iterator[FakeSalesforce]:
    with running_salesforce(CLIENT_ID, CLIENT_SECRET) as fake:
        yield fake


@pytest.fixture
def service(clean_redis: str, salesforce: FakeSalesforce, tmp_path: Path) -> Iterator[httpx.Client]:
    """The running service, on a flushed Redis; its log is printed if the test fails."""
    products_file = tmp_path / "products.toml"
    products_file.write_text(
        PRODUCTS_TOML.format(
            token=INGEST_TOKEN,
            instance_url=salesforce.url,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            webhook_token=WEBHOOK_TOKEN,
        )
    )
    with bridge(
        redis_url=clean_redis, products_file=products_file, log_path=tmp_path / "bridge.log"
    ) as running:
        yield running.client


def post_batch(service: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    headers = {"authorization": f"Bearer {INGEST_TOKEN}"}
    return service.post("/actions/globex", json=body, headers=headers)


def case_created(service: httpx.Client, session_id: str) -> httpx.Response:
    """What the record-triggered Flow's HTTP callout posts when a case is created."""
    body = {
        "event": "case.created",
        "case_id": CASE_ID,
        "session_id": session_id,
        "contact_external_id": None,
        "contact_email": "dana.whitfield@example.com",
        "id": f"case.created:{CASE_ID}",
    }
    headers = webhook_headers(WEBHOOK_TOKEN)
    return service.post("/chatbot-webhook/globex", content=json.dumps(body), headers=headers)


def link(service: httpx.Client, salesforce: FakeSalesforce, session_id: str) -> None:
    """A batch, the case's webhook, and the at-link flush comment."""
    assert post_batch(service, batch(session_id, ("Opened export", T0))).status_code == 202
    r = case_created(service, session_id)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "linked", "session_id": session_id, "conversation_id": CASE_ID}
    salesforce.wait_for_comments(1, timeout_s=5)


@pytest.mark.timeout(20)
def test_a_new_case_with_a_session_id_gets_one_private_comment(
    service: httpx.Client, salesforce: FakeSalesforce
) -> None:
    r = post_batch(service, batch("s-sf-1", ("A", T0), ("B", T0 + 0.5), ("C", T0 + 1.2)))
    assert r.status_code == 202, r.text
    assert r.json()["linked"] is False

    r = case_created(service, "s-sf-1")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "linked", "session_id": "s-sf-1", "conversation_id": CASE_ID}

    (comment,) = salesforce.wait_for_comments(1, timeout_s=5)
    time.sleep(QUIET_S)
    assert len(salesforce.comments) == 1
    assert comment.parent_id == CASE_ID
    assert comment.is_published is False
    assert comment.body == (
        "session_id: s-sf-1\ntimestamp: 2024-01-15 12:34:50 UTC\n\n[1] A\n[2] B\n\n[3] C"
    )
    assert salesforce.token_calls == 1
    assert salesforce.refused == 0

    wrong = service.post(
        "/chatbot-webhook/globex", content=b"{}", headers=webhook_headers("not-the-bridge-token")
    )
    assert wrong.status_code == 401


@pytest.mark.timeout(20)
def test_a_long_note_arrives_as_ordered_private_comments(
    service: httpx.Client, salesforce: FakeSalesforce
) -> None:
    link(service, salesforce, "s-sf-2")
    descriptions = [f"User clicked row {n} of the export table ".ljust(120, ".") for n in range(60)]
    actions = [(text, T0 + 10 + n * 0.1) for n, text in enumerate(descriptions)]
    assert post_batch(service, batch("s-sf-2", *actions)).status_code == 202

    _flush, *parts = salesforce.wait_for_comments(3, timeout_s=5)
    time.sleep(QUIET_S)
    assert len(salesforce.comments) == 3
    lines = [f"[{n}] {text}" for n, text in enumerate(descriptions, start=1)]
    expected = "session_id: s-sf-2\ntimestamp: 2024-01-15 12:35:00 UTC\n\n" + "\n".join(lines)
    assert len(expected) > 4000
    assert "\n".join(part.body for part in parts) == expected  # in order, cut at line breaks
    assert all(len(part.body.encode()) < 4000 for part in parts)
    assert all(part.is_published is False and part.parent_id == CASE_ID for part in parts)
    assert parts[1].body.startswith("[")
    assert salesforce.token_calls == 1


@pytest.mark.timeout(20)
def test_an_expired_token_is_fetched_again_exactly_once(
    service: httpx.Client, salesforce: FakeSalesforce
) -> None:
    link(service, salesforce, "s-sf-3")
    assert salesforce.token_calls == 1

    salesforce.expire_tokens()
    assert post_batch(service, batch("s-sf-3", ("Clicked Retry", T0 + 20))).status_code == 202
    _, comment = salesforce.wait_for_comments(2, timeout_s=5)
    time.sleep(QUIET_S)
    assert len(salesforce.comments) == 2
    assert (
        comment.body
        == "session_id: s-sf-3\ntimestamp: 2024-01-15 12:35:10 UTC\n\n[1] Clicked Retry"
    )
    assert salesforce.refused == 1
    assert salesforce.token_calls == 2
