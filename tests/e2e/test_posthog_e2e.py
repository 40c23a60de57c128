"""PostHog in, Intercom out, with no connector and no identity setup.

The real service (``python -m app serve``) over a real Redis takes a stream of PostHog events
from the HTTP Webhook destination, one event per request, signed the way PostHog signs them
(Standard Webhooks, with the destination's ``signing_secret``). An anonymous visitor then opens
an Intercom conversation: the webhook names only Intercom's contact, whose
``latestPosthogReplayURL`` (written by posthog-js's Intercom integration) carries the session.
The fake Intercom gets one admin note with the described actions and a replay link, then one
note per later burst.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import math
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import INGEST_TOKEN
from tests.e2e.service import Bridge, bridge
from tests.e2e.test_intercom_e2e import (
    ACCESS_TOKEN,
    ADMIN_ID,
    CLIENT_SECRET,
    CONVERSATION_ID,
    QUIET_S,
    notification,
    signed_headers,
)
from tests.fakes.intercom import FakeIntercom, running_intercom

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "posthog"
SIGNING_KEY = b"e2e-posthog-destination-signing-key"
SIGNING_SECRET = "whsec_" + base64.b64encode(SIGNING_KEY).decode()
SESSION_ID = "0195937a-0b8e-7c13-a6d4-91f2e5b3c870"
CONTACT_ID = "6657ad0f7a6d8b3c1e2f4a5b"
PROJECT_URL = "https://eu.posthog.com/project/48213"
BIN_SECONDS = 3
INGEST_AUTH = {"authorization": f"Bearer {INGEST_TOKEN}"}

PRODUCTS_TOML = """
[products.acme]
platform = "intercom"
ingest_token = "{ingest_token}"
post_link_debounce_s = 0.2
post_link_max_wait_s = 2.0
bin_seconds = {bin_seconds}

[products.acme.intercom]
access_token = "{access_token}"
admin_id = "{admin_id}"
client_secret = "{client_secret}"
api_base = "{api_base}"

[products.acme.posthog]
webhook_secret = "{signing_secret}"
replay_links = true
"""


def posthog_signed(body: bytes, *, msg_id: str | None = None) -> dict[str, str]:
    """The headers PostHog's destination sends with a ``signing_secret``: Standard Webhooks,
    an HMAC-SHA256 of ``{id}.{timestamp}.{body}`` with the secret's decoded key."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = str(int(time.time()))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(SIGNING_KEY, signed, hashlib.sha256).digest()
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def header_time(t: float) -> str:
    return datetime.fromtimestamp(math.floor(t), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def event(
    name: str,
    at: float,
    *,
    session_id: str | None = SESSION_ID,
    chain: str = "",
    **properties: Any,
) -> dict[str, Any]:
    """The destination's default body ``{"event": {event}, "person": {person}}``, plus the
    ``project`` the product's replay links use, shaped after PostHog's own click fixture."""
    body = copy.deepcopy(json.loads((FIXTURES / "autocapture_click.json").read_text()))
    fields = body["event"]
    fields.update(uuid=str(uuid.uuid4()), event=name, timestamp=iso(at), elements_chain=chain)
    props = {
        key: value
        for key, value in fields["properties"].items()
        if key not in ("$event_type", "$el_text", "$pathname", "$current_url")
    }
    props.update(properties)
    if session_id is None:
        props.pop("$session_id", None)
    else:
        props["$session_id"] = session_id
    fields["properties"] = props
    body["project"] = {"id": 48213, "name": "Acme web", "url": PROJECT_URL}
    return body


def post_event(service: Bridge, body: dict[str, Any], **sign: Any) -> dict[str, Any]:
    raw = json.dumps(body).encode()
    r = service.client.post("/posthog/acme", content=raw, headers=posthog_signed(raw, **sign))
    assert r.status_code == 202, r.text
    answer: dict[str, Any] = r.json()
    return answer


@pytest.fixture
def fake() -> Iterator[FakeIntercom]:
    with running_intercom(access_token=ACCESS_TOKEN, admin_id=ADMIN_ID) as running:
        yield running


@pytest.fixture
def service(clean_redis: str, fake: FakeIntercom, tmp_path: Path) -> Iterator[Bridge]:
    products_file = tmp_path / "products.toml"
    products_file.write_text(
        PRODUCTS_TOML.format(
            ingest_token=INGEST_TOKEN,
            bin_seconds=BIN_SECONDS,
            access_token=ACCESS_TOKEN,
            admin_id=ADMIN_ID,
            client_secret=CLIENT_SECRET,
            api_base=fake.api_base,
            signing_secret=SIGNING_SECRET,
        )
    )
    with bridge(
        redis_url=clean_redis, products_file=products_file, log_path=tmp_path / "bridge.log"
    ) as running:
        yield running


def anonymous_conversation() -> bytes:
    """conversation.user.created from a lead with no email and no external id."""
    contacts = {
        "type": "contact.list",
        "contacts": [{"type": "contact", "id": CONTACT_ID, "external_id": None}],
    }
    source = {
        "type": "conversation",
        "id": "2184407512",
        "delivered_as": "customer_initiated",
        "body": "<p>Where did my export go?</p>",
        "author": {"type": "lead", "id": CONTACT_ID, "name": None, "email": ""},
    }
    return notification(
        "conversation_user_created", contacts=contacts, source=source, custom_attributes={}
    )


@pytest.mark.timeout(30)
def test_posthog_events_become_an_intercom_note_linked_by_the_replay_url(
    service: Bridge, fake: FakeIntercom
) -> None:
    # Half a minute ago, aligned to a bin, so the pre-link note's blank line is predictable.
    base = math.floor(time.time() / BIN_SECONDS) * BIN_SECONDS - 30.0
    click = event(
        "$autocapture",
        base + 1.0,
        chain='a.nav-link:attr__class="nav-link"attr__href="/help"href="/help"'
        'nth-child="1"nth-of-type="1"text="Say \\"hi\\"";li:nth-child="3"nth-of-type="3"',
        **{"$event_type": "click", "$pathname": "/dashboard"},
    )
    stream = [
        event("$pageview", base + 0.2, **{"$pathname": "/pricing"}),
        click,
        event(
            "$autocapture",
            base + 2.0,
            chain='form.signup:attr__class="signup"nth-child="1"nth-of-type="1"',
            **{"$event_type": "submit", "$current_url": "https://app.example.com/signup?p=1"},
        ),
        event("$rageclick", base + 4.0, **{"$el_text": " Save\n changes ", "$pathname": "/s"}),
        event("export_started", base + 4.5, **{"$pathname": "/dashboard"}),  # not in `events`
        event("$pageview", base + 5.0, session_id=None, **{"$pathname": "/x"}),  # no session
    ]
    answers = [post_event(service, body) for body in stream]
    # PostHog retries a request that timed out: same event, a new delivery.
    answers.append(post_event(service, click))
    totals = {k: sum(a[k] for a in answers) for k in ("accepted", "duplicates", "ignored")}
    assert totals == {"accepted": 4, "duplicates": 1, "ignored": 2}
    time.sleep(QUIET_S)
    assert fake.calls == [], "nothing is posted before a conversation links the session"

    fake.add_contact(
        CONTACT_ID,
        latestPosthogReplayURL=f"{PROJECT_URL}/replay/{SESSION_ID}?t=12",
        latestPosthogPersonURL=f"{PROJECT_URL}/person/0195936f-a1c4-7e08-9d2b-6f3e8a1c5d40",
    )
    body = anonymous_conversation()
    r = service.client.post("/chatbot-webhook/acme", content=body, headers=signed_headers(body))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "linked",
        "session_id": SESSION_ID,
        "conversation_id": CONVERSATION_ID,
    }

    (flush,) = fake.wait_for_replies(1, timeout_s=5)
    assert flush.payload["body"] == "<br>".join(
        [
            f"session_id: {SESSION_ID}",
            f"timestamp: {header_time(base + 0.2)}",
            f"replay: {PROJECT_URL}/replay/{SESSION_ID}",
            "",
            "[1] User viewed /pricing",
            '[2] User clicked link "Say "hi"" on /dashboard',
            "[3] User submitted form on /signup",
            "",
            '[4] User rage-clicked element "Save changes" on /s',
        ]
    )
    (read,) = fake.contact_reads()
    assert read.path == f"/contacts/{CONTACT_ID}"
    assert read.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"

    # Later events of the session: one note per burst, without the replay line.
    later = time.time()
    post_event(service, event("$pageleave", later, **{"$pathname": "/s"}))
    post_event(service, event("$pageview", later + 0.05, **{"$pathname": "/help"}))
    _, burst = fake.wait_for_replies(2, timeout_s=5)
    assert burst.payload["body"] == "<br>".join(
        [
            f"session_id: {SESSION_ID}",
            f"timestamp: {header_time(later)}",
            "",
            "[1] User left /s",
            "[2] User viewed /help",
        ]
    )
    # A reply in the same conversation is already linked: the contact comes from the cache.
    reply = notification(
        "conversation_user_replied",
        contacts={"type": "contact.list", "contacts": [{"type": "contact", "id": CONTACT_ID}]},
        custom_attributes={},
    )
    r = service.client.post("/chatbot-webhook/acme", content=reply, headers=signed_headers(reply))
    assert r.status_code == 200, r.text
    assert len(fake.contact_reads()) == 1


@pytest.mark.timeout(20)
def test_an_event_signed_with_another_secret_is_refused_and_stores_nothing(
    service: Bridge,
) -> None:
    raw = json.dumps(event("$pageview", time.time(), **{"$pathname": "/pricing"})).encode()
    headers = posthog_signed(raw)
    forged = hmac.new(b"not-the-destination-key", raw, hashlib.sha256).digest()
    headers["webhook-signature"] = "v1," + base64.b64encode(forged).decode()
    r = service.client.post("/posthog/acme", content=raw, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized"
    r = service.client.get(f"/sessions/acme/{SESSION_ID}", headers=INGEST_AUTH)
    assert r.status_code == 404, r.text
    # The same event, signed with the destination's secret, is stored.
    assert post_event(service, json.loads(raw))["accepted"] == 1
    r = service.client.get(f"/sessions/acme/{SESSION_ID}", headers=INGEST_AUTH)
    assert r.status_code == 200, r.text
