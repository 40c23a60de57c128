"""Linking an Intercom conversation through the contact's PostHog replay URL.

posthog-js's Intercom integration (``integrations: {intercom: true}``) writes
``latestPosthogReplayURL`` on the Intercom contact; when nothing else in a webhook finds the
session, the adapter reads the contact (``GET /contacts/{id}``, cached 10 minutes) and takes
the session id from that URL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import respx
from prometheus_client import REGISTRY

from app.domain import LinkEvent, WebhookEvent
from app.platforms.base import RATE_LIMIT_PAUSE_S, PermanentDeliveryError, RetryableDeliveryError
from app.platforms.intercom import (
    CONTACT_CACHE_TTL_S,
    IntercomPlatform,
    session_from_replay_url,
)
from app.store import keys
from tests.conftest import ManualClock, batch
from tests.harness import Harness, running_app
from tests.platforms.test_intercom import (
    ACCESS_TOKEN,
    API_BASE,
    REPLY_URL,
    T0,
    answer_with_our_note,
    created_item,
    encode,
    fixture,
    intercom_product,
    make_note,
    post_signed,
)

CONTACT_ID = "6657ad0f7a6d8b3c1e2f4a5b"
CONTACT_URL = f"{API_BASE}/contacts/{CONTACT_ID}"
REPLAY_SESSION = "01900c7e-3a9b-7c21-8f4d-6e5a2b1c0d9f"
CONVERSATION_ID = "215468532190451"


def contact(replay_url: Any = "fixture") -> dict[str, Any]:
    """Intercom's Get Contact answer for a lead; ``replay_url`` replaces the fixture's."""
    data = fixture("get_contact_response")
    if replay_url is None:
        del data["custom_attributes"]["latestPosthogReplayURL"]
    elif replay_url != "fixture":
        data["custom_attributes"]["latestPosthogReplayURL"] = replay_url
    return data


def lookups(result: str, product: str = "acme") -> float:
    labels = {"product": product, "platform": "intercom", "result": result}
    return REGISTRY.get_sample_value("bridge_platform_lookups_total", labels) or 0


def event(contact_id: str | None = CONTACT_ID) -> WebhookEvent:
    return WebhookEvent(
        delivery_id="notif_1",
        event=LinkEvent.NEW,
        conversation_id=CONVERSATION_ID,
        contact_id=contact_id,
    )


def anonymous_created(contact_id: str = CONTACT_ID, **item: Any) -> bytes:
    """conversation.user.created from a lead Intercom knows nothing about: no email, no
    external id, no session attribute."""
    envelope = fixture("conversation_user_created")
    body = created_item(envelope)
    body["contacts"]["contacts"] = [{"type": "contact", "id": contact_id, "external_id": None}]
    body["source"]["author"] = {"type": "lead", "id": contact_id, "name": None, "email": ""}
    body["custom_attributes"] = {}
    body.update(item)
    return encode(envelope)


def known_user_created(external_id: str = "ph_user_7c1e") -> bytes:
    """conversation.user.created from a user with an external id and email, no session."""
    envelope = fixture("conversation_user_created")
    body = created_item(envelope)
    body["contacts"]["contacts"] = [
        {"type": "contact", "id": CONTACT_ID, "external_id": external_id}
    ]
    body["custom_attributes"] = {}
    return encode(envelope)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http_client:
        yield http_client


@pytest.fixture
def platform(client: httpx.AsyncClient, clock: ManualClock) -> IntercomPlatform:
    return IntercomPlatform(intercom_product(), client, clock)


@pytest.fixture
def intercom() -> Any:
    with respx.mock(assert_all_called=False) as router:
        yield router


# --- the replay URL ---


@pytest.mark.parametrize(
    "url",
    [
        f"https://us.posthog.com/project/12345/replay/{REPLAY_SESSION}",
        f"https://eu.posthog.com/project/phc_abc/replay/{REPLAY_SESSION}?t=20",
        f"https://app.posthog.com/replay/{REPLAY_SESSION}",
        f"https://posthog.example.com/replay/{REPLAY_SESSION}/",
        f"https://us.posthog.com/project/1/replay/{REPLAY_SESSION}#player",
        f"  https://us.posthog.com/replay/{REPLAY_SESSION}  ",
        f"https://us.posthog.com/replay/{REPLAY_SESSION.replace('-', '%2D')}",
    ],
)
def test_the_session_is_the_segment_after_replay(url: str) -> None:
    assert session_from_replay_url(url) == REPLAY_SESSION


@pytest.mark.parametrize(
    "url",
    [
        None,
        42,
        ["https://us.posthog.com/replay/abc"],
        "",
        "https://us.posthog.com/project/12345/person/ph_user_7c1e",
        "https://us.posthog.com/project/12345/replay",
        "https://us.posthog.com/project/12345/replay/",
        "https://us.posthog.com/replay/has%20space",
        "https://us.posthog.com/replay/" + "a" * 129,
        "https://us.posthog.com/replay/" + "a" * 2100,
        "http://[::1/replay/abc",  # urlsplit refuses it
        "https://us.posthog.com/?next=/replay/abc",
    ],
)
def test_a_replay_url_without_a_usable_session_names_none(url: object) -> None:
    assert session_from_replay_url(url) is None


# --- parsing ---


async def test_the_webhook_carries_the_contacts_intercom_id(platform: IntercomPlatform) -> None:
    parsed = await platform.parse({}, anonymous_created())
    assert (parsed.contact_id, parsed.user_id, parsed.email) == (CONTACT_ID, None, None)


async def test_a_1x_payload_carries_the_users_intercom_id(platform: IntercomPlatform) -> None:
    envelope = fixture("conversation_user_created_v1")
    parsed = await platform.parse({}, encode(envelope))
    assert parsed.contact_id == envelope["data"]["item"]["user"]["id"]


# --- find_session: the Get Contact call and its cache ---


async def test_find_session_reads_the_contact_with_the_apps_token(
    platform: IntercomPlatform, intercom: respx.MockRouter
) -> None:
    route = intercom.get(CONTACT_URL).respond(200, json=contact())
    assert await platform.find_session(event()) == REPLAY_SESSION
    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert request.headers["intercom-version"] == "2.14"
    assert request.headers["accept"] == "application/json"


async def test_a_webhook_without_a_contact_id_reads_nothing(
    platform: IntercomPlatform, intercom: respx.MockRouter
) -> None:
    route = intercom.get(url__startswith=f"{API_BASE}/contacts/")
    assert await platform.find_session(event(contact_id=None)) is None
    assert route.call_count == 0


async def test_the_contact_id_is_escaped_in_the_path(
    platform: IntercomPlatform, intercom: respx.MockRouter
) -> None:
    route = intercom.get(f"{API_BASE}/contacts/a%2F..%2Fb").respond(200, json=contact())
    assert await platform.find_session(event(contact_id="a/../b")) == REPLAY_SESSION
    assert route.call_count == 1


async def test_a_contact_id_that_is_no_path_segment_is_refused(
    platform: IntercomPlatform,
) -> None:
    with pytest.raises(PermanentDeliveryError, match="contact id"):
        await platform.find_session(event(contact_id=".."))


async def test_a_contact_is_read_once_per_ten_minutes(
    platform: IntercomPlatform, intercom: respx.MockRouter, clock: ManualClock
) -> None:
    route = intercom.get(CONTACT_URL).respond(200, json=contact())
    before = (lookups("found"), lookups("cached"))
    assert await platform.find_session(event()) == REPLAY_SESSION
    clock.advance(CONTACT_CACHE_TTL_S - 1)
    assert await platform.find_session(event()) == REPLAY_SESSION
    assert route.call_count == 1
    assert (lookups("found"), lookups("cached")) == (before[0] + 1, before[1] + 1)
    clock.advance(1)
    assert await platform.find_session(event()) == REPLAY_SESSION
    assert route.call_count == 2


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json=contact(replay_url=None)),
        httpx.Response(200, json=contact(replay_url="https://us.posthog.com/project/1/person/x")),
        httpx.Response(200, json={**contact(), "custom_attributes": None}),
        httpx.Response(200, text="<html>not json</html>"),
        httpx.Response(404, json={"type": "error.list", "errors": [{"code": "not_found"}]}),
    ],
    ids=["no-attribute", "not-a-replay-url", "no-attributes", "not-json", "deleted-contact"],
)
async def test_a_contact_without_a_replay_session_names_none_and_is_cached(
    platform: IntercomPlatform, intercom: respx.MockRouter, answer: httpx.Response
) -> None:
    route = intercom.get(CONTACT_URL).mock(return_value=answer)
    before = lookups("not_found")
    assert await platform.find_session(event()) is None
    assert await platform.find_session(event()) is None
    assert route.call_count == 1
    assert lookups("not_found") == before + 1


@pytest.mark.parametrize(
    "failure",
    [httpx.Response(503), httpx.Response(401), httpx.ConnectError("refused")],
    ids=["5xx", "unauthorized", "network"],
)
async def test_a_failed_read_raises_and_is_not_cached(
    platform: IntercomPlatform, intercom: respx.MockRouter, failure: Any
) -> None:
    route = intercom.get(CONTACT_URL)
    route.side_effect = [failure, httpx.Response(200, json=contact())]
    before = lookups("failed")
    with pytest.raises(Exception) as caught:
        await platform.find_session(event())
    assert isinstance(caught.value, RetryableDeliveryError | PermanentDeliveryError)
    assert lookups("failed") == before + 1
    assert await platform.find_session(event()) == REPLAY_SESSION


async def test_no_contact_is_read_while_intercom_asks_us_to_wait(
    platform: IntercomPlatform, intercom: respx.MockRouter, clock: ManualClock
) -> None:
    reset_at = int(clock.now()) + 30
    route = intercom.get(CONTACT_URL)
    route.side_effect = [
        httpx.Response(429, headers={"X-RateLimit-Reset": str(reset_at)}),
        httpx.Response(200, json=contact()),
    ]
    with pytest.raises(RetryableDeliveryError):
        await platform.find_session(event())
    clock.advance(10)
    before = lookups("rate_limited")
    with pytest.raises(RetryableDeliveryError) as caught:
        await platform.find_session(event())
    assert caught.value.retry_after_s == pytest.approx(20)
    assert route.call_count == 1
    assert lookups("rate_limited") == before + 1
    clock.advance(20)
    assert await platform.find_session(event()) == REPLAY_SESSION


async def test_a_rate_limited_note_pauses_contact_reads_too(
    platform: IntercomPlatform, intercom: respx.MockRouter, clock: ManualClock
) -> None:
    intercom.post(REPLY_URL).respond(429)  # no hint: the default pause
    contact_route = intercom.get(CONTACT_URL).respond(200, json=contact())
    with pytest.raises(RetryableDeliveryError):
        await platform.post_note(make_note())
    with pytest.raises(RetryableDeliveryError):
        await platform.find_session(event())
    assert contact_route.call_count == 0
    clock.advance(RATE_LIMIT_PAUSE_S)
    assert await platform.find_session(event()) == REPLAY_SESSION


# --- the webhook route, in-process over a real Redis ---


@pytest.fixture
async def bridge(redis_client: aioredis.Redis, clock: ManualClock) -> AsyncIterator[Harness]:
    clock.t = T0
    async with running_app(
        products=[intercom_product()], clock=clock, redis_client=redis_client
    ) as harness:
        yield harness


async def test_a_lead_with_only_a_replay_url_links_and_gets_its_flush_note(
    bridge: Harness, intercom: respx.MockRouter
) -> None:
    intercom.get(CONTACT_URL).respond(200, json=contact())
    reply = intercom.post(REPLY_URL).mock(return_value=answer_with_our_note("31894415001"))
    r = await bridge.post_batch("acme", batch(REPLAY_SESSION, ("Clicked Export CSV", T0)))
    assert r.status_code == 202, r.text

    r = await post_signed(bridge, anonymous_created())
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "linked",
        "session_id": REPLAY_SESSION,
        "conversation_id": CONVERSATION_ID,
    }
    assert await bridge.deliver() == 1
    body = json.loads(reply.calls.last.request.content)["body"]
    assert body == (
        f"session_id: {REPLAY_SESSION}<br>timestamp: 2024-06-10 14:58:40 UTC<br><br>"
        "[1] Clicked Export CSV"
    )


async def test_the_replay_url_is_read_only_when_nothing_else_finds_the_session(
    bridge: Harness, intercom: respx.MockRouter
) -> None:
    route = intercom.get(CONTACT_URL).respond(200, json=contact())
    r = await bridge.post_batch("acme", batch("s-known", ("Clicked", T0), user_id="ph_user_7c1e"))
    assert r.status_code == 202
    r = await post_signed(bridge, known_user_created())
    assert r.json()["session_id"] == "s-known"
    assert route.call_count == 0


async def test_a_known_user_without_a_session_yet_links_by_the_replay_url(
    bridge: Harness, intercom: respx.MockRouter, redis_client: aioredis.Redis
) -> None:
    intercom.get(CONTACT_URL).respond(200, json=contact())
    r = await post_signed(bridge, known_user_created())
    assert r.json() == {
        "status": "linked",
        "session_id": REPLAY_SESSION,
        "conversation_id": CONVERSATION_ID,
    }
    # The conversation no longer waits for the user's first batch: that batch, of another
    # session, does not take the conversation over.
    assert await redis_client.get(keys.pending_key("acme", user_id="ph_user_7c1e")) is None
    r = await bridge.post_batch("acme", batch("s-other", ("Clicked", T0), user_id="ph_user_7c1e"))
    assert r.status_code == 202
    view = await bridge.services.store.session_view("acme", "s-other")
    assert view is not None and "conversation" not in view["state"]


async def test_a_redelivery_after_a_replay_url_link_is_a_duplicate(
    bridge: Harness, intercom: respx.MockRouter
) -> None:
    route = intercom.get(CONTACT_URL).respond(200, json=contact())
    body = anonymous_created()
    assert (await post_signed(bridge, body)).json()["status"] == "linked"
    assert (await post_signed(bridge, body)).json()["status"] == "duplicate"
    assert route.call_count == 1  # the second answer came from the cache


@pytest.mark.parametrize(
    ("make_body", "status"),
    [(anonymous_created, "ignored"), (known_user_created, "pending_identity")],
    ids=["anonymous", "known-user"],
)
async def test_a_contact_without_a_replay_url_changes_nothing(
    bridge: Harness, intercom: respx.MockRouter, make_body: Any, status: str
) -> None:
    intercom.get(CONTACT_URL).respond(200, json=contact(replay_url=None))
    r = await post_signed(bridge, make_body())
    assert r.status_code == 200
    assert r.json()["status"] == status


async def test_a_failed_read_for_an_anonymous_lead_asks_intercom_to_retry(
    bridge: Harness, intercom: respx.MockRouter
) -> None:
    route = intercom.get(CONTACT_URL)
    route.side_effect = [httpx.Response(502), httpx.Response(200, json=contact())]
    body = anonymous_created()
    r = await post_signed(bridge, body)
    assert r.status_code == 503
    assert r.json()["error"] == "platform_unavailable"
    assert r.headers["retry-after"] == "5"
    # Nothing was recorded: Intercom's retry of the same notification links.
    r = await post_signed(bridge, body)
    assert r.json()["status"] == "linked"


async def test_a_rate_limited_read_answers_with_intercoms_wait(
    bridge: Harness, intercom: respx.MockRouter, clock: ManualClock
) -> None:
    reset_at = int(clock.now()) + 42
    intercom.get(CONTACT_URL).respond(429, headers={"X-RateLimit-Reset": str(reset_at)})
    r = await post_signed(bridge, anonymous_created())
    assert r.status_code == 503
    assert r.headers["retry-after"] == "42"


async def test_a_failed_read_for_a_known_user_leaves_the_conversation_waiting(
    bridge: Harness, intercom: respx.MockRouter
) -> None:
    intercom.get(CONTACT_URL).respond(503)
    r = await post_signed(bridge, known_user_created())
    assert r.status_code == 200
    assert r.json()["status"] == "pending_identity"
    # The user's first batch links it, as with any pending identity.
    r = await bridge.post_batch("acme", batch("s-first", ("Clicked", T0), user_id="ph_user_7c1e"))
    assert r.status_code == 202
    view = await bridge.services.store.session_view("acme", "s-first")
    assert view is not None and view["state"]["conversation"] == CONVERSATION_ID
