"""The real service (``python -m app serve``) over a real Redis, posting notes to a fake Intercom.

The first tests drive the adapter against the fake over the loopback network; the others run the
whole deployment: a batch for a user, then Intercom's signed webhook, then one admin note.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.domain import Note
from app.platforms.base import ConversationNotFound, RetryableDeliveryError
from app.platforms.intercom import IntercomPlatform
from tests.conftest import INGEST_TOKEN, ManualClock, batch, make_product
from tests.e2e.service import Bridge, bridge
from tests.fakes.intercom import FakeIntercom, running_intercom

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "intercom"
ACCESS_TOKEN = "dG9rOjk4NzY1NDMyMTA6ZTJl"
ADMIN_ID = "7300412"
CLIENT_SECRET = "e2e-intercom-client-secret"
CONVERSATION_ID = "215468532190451"
# Long enough for a note that should not exist to show up (debounce 0.2 s plus a worker turn).
QUIET_S = 0.6
T0 = 1_705_322_090.0  # 2024-01-15 12:34:50 UTC

PRODUCTS_TOML = """
[products.acme]
platform = "intercom"
ingest_token = "{ingest_token}"
post_link_debounce_s = 0.2
post_link_max_wait_s = 2.0
bin_seconds = 3

[products.acme.intercom]
access_token = "{access_token}"
admin_id = "{admin_id}"
client_secret = "{client_secret}"
api_base = "{api_base}/"
api_version = "2.14"
body_format = "html"
"""


def notification(name: str, **item_changes: Any) -> bytes:
    envelope = json.loads((FIXTURES / f"{name}.json").read_bytes())
    envelope["data"]["item"].update(item_changes)
    return json.dumps(envelope).encode()


def signed_headers(body: bytes) -> dict[str, str]:
    digest = hmac.new(CLIENT_SECRET.encode(), body, hashlib.sha1).hexdigest()
    return {"content-type": "application/json", "x-hub-signature": f"sha1={digest}"}


@pytest.fixture
def fake() -> Iterator[FakeIntercom]:
    with running_intercom(access_token=ACCESS_TOKEN, admin_id=ADMIN_ID) as running:
        yield running


# --- the adapter against the fake, over the network ---


@pytest.fixture
async def adapter(fake: FakeIntercom) -> AsyncIterator[IntercomPlatform]:
    product = make_product(
        platform="intercom",
        intercom={
            "access_token": ACCESS_TOKEN,
            "admin_id": ADMIN_ID,
            "client_secret": CLIENT_SECRET,
            "api_base": fake.api_base,
        },
    )
    async with httpx.AsyncClient() as client:
        yield IntercomPlatform(product, client, ManualClock(start=time.time()))


def note(conversation_id: str = CONVERSATION_ID) -> Note:
    body = "session_id: s1\ntimestamp: 2024-01-15 12:34:50 UTC\n\n[1] A"
    return Note("acme", "s1", conversation_id, "postlink", body, delivery_id="n1")


async def test_a_note_id_comes_from_the_part_intercom_created(
    adapter: IntercomPlatform, fake: FakeIntercom
) -> None:
    first = await adapter.post_note(note())
    second = await adapter.post_note(note())
    assert first is not None
    assert [first, second] == [part["id"] for part in fake.parts(CONVERSATION_ID)]
    await adapter.redact_note(CONVERSATION_ID, first)
    assert [part["redacted"] for part in fake.parts(CONVERSATION_ID)] == [True, False]


async def test_a_rate_limit_becomes_a_wait_until_its_reset(
    adapter: IntercomPlatform, fake: FakeIntercom
) -> None:
    fake.rate_limit_next(reset_at=int(adapter.clock.now()) + 9)
    with pytest.raises(RetryableDeliveryError) as caught:
        await adapter.post_note(note())
    assert 8 <= (caught.value.retry_after_s or 0) <= 9
    assert await adapter.post_note(note()) is not None


async def test_a_deleted_conversation_is_not_found(
    adapter: IntercomPlatform, fake: FakeIntercom
) -> None:
    fake.delete_conversation("gone")
    with pytest.raises(ConversationNotFound):
        await adapter.post_note(note("gone"))


# --- the deployed service ---


@pytest.fixture
def service(clean_redis: str, fake: FakeIntercom, tmp_path: Path) -> Iterator[Bridge]:
    products_file = tmp_path / "products.toml"
    products_file.write_text(
        PRODUCTS_TOML.format(
            ingest_token=INGEST_TOKEN,
            access_token=ACCESS_TOKEN,
            admin_id=ADMIN_ID,
            client_secret=CLIENT_SECRET,
            api_base=fake.api_base,
        )
    )
    with bridge(
        redis_url=clean_redis, products_file=products_file, log_path=tmp_path / "bridge.log"
    ) as running:
        yield running


def post_notification(service: Bridge, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return service.client.post("/chatbot-webhook/acme", content=body, headers=headers)


@pytest.mark.timeout(20)
def test_batch_then_signed_user_created_posts_one_escaped_note(
    service: Bridge, fake: FakeIntercom
) -> None:
    actions = batch(
        "s1", ("User clicked <b>Export</b> & waited", T0), ("Retry", T0 + 0.5), user_id="u1"
    )
    r = service.post_batch("acme", actions)
    assert r.status_code == 202, r.text
    assert r.json()["linked"] is False

    contacts = {
        "type": "contact.list",
        "contacts": [{"type": "contact", "id": "c1", "external_id": "u1"}],
    }
    body = notification("conversation_user_created", contacts=contacts, custom_attributes={})
    r = post_notification(service, body, signed_headers(body))
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "linked", "session_id": "s1", "conversation_id": CONVERSATION_ID}

    (reply,) = fake.wait_for_replies(1, timeout_s=5)
    # Our note comes back as an admin topic: it must not loop into another note.
    echo = notification("conversation_admin_noted")
    r = post_notification(service, echo, signed_headers(echo))
    assert r.json()["status"] == "ignored"
    time.sleep(QUIET_S)
    assert len(fake.calls) == 1

    assert reply.path == f"/conversations/{CONVERSATION_ID}/reply"
    assert reply.payload == {
        "message_type": "note",
        "type": "admin",
        "admin_id": ADMIN_ID,
        "body": (
            "session_id: s1<br>timestamp: 2024-01-15 12:34:50 UTC<br><br>"
            "[1] User clicked &lt;b&gt;Export&lt;/b&gt; &amp; waited<br>[2] Retry"
        ),
    }
    assert reply.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert reply.headers["intercom-version"] == "2.14"
    assert reply.headers["accept"] == "application/json"
    assert reply.headers["content-type"] == "application/json"


@pytest.mark.timeout(20)
def test_a_forged_webhook_is_401_and_posts_nothing(service: Bridge, fake: FakeIntercom) -> None:
    r = service.post_batch("acme", batch("s2", ("A", T0), user_id="u2"))
    assert r.status_code == 202, r.text
    contacts = {"type": "contact.list", "contacts": [{"type": "contact", "external_id": "u2"}]}
    body = notification("conversation_user_created", contacts=contacts, custom_attributes={})
    forged = {**signed_headers(b"{}"), "content-type": "application/json"}
    r = post_notification(service, body, forged)
    assert r.status_code == 401
    time.sleep(QUIET_S)
    assert fake.calls == []


@pytest.mark.timeout(20)
def test_a_lone_surrogate_in_a_signed_webhook_is_400_and_the_service_keeps_linking(
    service: Bridge, fake: FakeIntercom
) -> None:
    """Redis cannot store a lone surrogate: such a webhook once answered 500 (and Intercom's
    single retry then lost the link). It is refused as invalid JSON, and the next one works."""
    r = service.post_batch("acme", batch("s3", ("A", T0), user_id="u3"))
    assert r.status_code == 202, r.text
    contacts = {"type": "contact.list", "contacts": [{"type": "contact", "external_id": "u3"}]}
    good = notification("conversation_user_created", contacts=contacts, custom_attributes={})
    bad = good.replace(b'"u3"', b'"u3\\ud800"')
    assert bad != good

    r = post_notification(service, bad, signed_headers(bad))
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_webhook"

    r = post_notification(service, good, signed_headers(good))
    assert r.json()["status"] == "linked"
    assert len(fake.wait_for_replies(1, timeout_s=5)) == 1
