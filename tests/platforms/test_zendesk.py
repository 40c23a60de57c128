import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import respx
from prometheus_client import REGISTRY
from starlette.datastructures import Headers

from app.domain import LinkEvent, Note
from app.platforms import build_platform
from app.platforms.base import (
    ConversationNotFound,
    InvalidWebhook,
    PermanentDeliveryError,
    RetryableDeliveryError,
    WebhookRejected,
)
from app.platforms.zendesk import (
    REQUESTER_CACHE_TTL_S,
    ZendeskPlatform,
    signed_delivery_id,
    zendesk_signature,
)
from app.products import ProductConfig
from tests.conftest import INGEST_TOKEN, ManualClock, batch
from tests.conftest import make_product as make_bridge_product
from tests.fakes.zendesk import signed_headers
from tests.harness import running_app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "zendesk"
NOW = 1_705_322_090.0  # 2024-01-15T12:34:50Z
SECRET = "dGhlIHdlYmhvb2sgc2lnbmluZyBzZWNyZXQ"
BASE = "https://globex.zendesk.com"
EMAIL = "bot@globex.example"
API_TOKEN = "6wiIBWbGkBMo1mRDMuVwkw1EPsNkeUj95PIz2akv"
OAUTH_TOKEN = "f4b1c7e2a9d86035bb1e7c2d0a9f4e61"
BASIC = "Basic " + base64.b64encode(f"{EMAIL}/token:{API_TOKEN}".encode()).decode()
TICKET_ID = "48213"
REQUESTER_ID = "26310245981713"
USER_URL = f"{BASE}/api/v2/users/{REQUESTER_ID}.json"
TICKET_URL = f"{BASE}/api/v2/tickets/{TICKET_ID}.json"
EXTERNAL_ID = "ph_distinct_8c2e71"
REQUESTER_EMAIL = "dana.whitfield@example.com"
INVOCATION_ID = "8350205582"


def lookups(result: str) -> float:
    labels = {"product": "globex", "platform": "zendesk", "result": result}
    return REGISTRY.get_sample_value("bridge_platform_lookups_total", labels) or 0


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(fixture_bytes(name))
    return data


def encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


def zendesk_section(**overrides: Any) -> dict[str, Any]:
    section = {"subdomain": "globex", "email": EMAIL, "api_token": API_TOKEN}
    return {**section, "webhook_secret": SECRET, **overrides}


def make_product(**overrides: Any) -> ProductConfig:
    return ProductConfig.model_validate(
        {
            "id": "globex",
            "platform": "zendesk",
            "ingest_token": "ingest-token-0123456789abcdef",
            "zendesk": zendesk_section(**overrides),
        }
    )


def make_note(**overrides: Any) -> Note:
    fields: dict[str, Any] = {
        "product_id": "globex",
        "session_id": "sess-1",
        "conversation_id": TICKET_ID,
        "kind": "postlink",
        "body": "session_id: sess-1\ntimestamp: 2024-01-15 12:34:50 UTC\n\n[1] User clicked Export",
        "delivery_id": "note_abc",
        **overrides,
    }
    return Note(**fields)


def signed(
    body: bytes, *, when: float = NOW, secret: str = SECRET, invocation_id: str = INVOCATION_ID
) -> dict[str, str]:
    return signed_headers(body, secret=secret, when=when, invocation_id=invocation_id)


def with_timestamp(body: bytes, timestamp: str) -> dict[str, str]:
    """Headers correctly signed over an arbitrary timestamp string."""
    return {
        "x-zendesk-webhook-signature": zendesk_signature(SECRET, timestamp=timestamp, body=body),
        "x-zendesk-webhook-signature-timestamp": timestamp,
    }


def comment_event(*, author_id: str, is_staff: bool) -> bytes:
    data = fixture("event_comment_added_by_requester")
    data["event"]["comment"]["author"].update(id=author_id, is_staff=is_staff)
    return encode(data)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http_client:
        yield http_client


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def platform(client: httpx.AsyncClient, clock: ManualClock) -> ZendeskPlatform:
    return ZendeskPlatform(make_product(), client, clock)


@pytest.fixture
def zendesk() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def users(zendesk: respx.MockRouter) -> respx.Route:
    return zendesk.get(USER_URL).respond(200, content=fixture_bytes("show_user"))


# --- verify ---


def test_verify_accepts_a_webhook_signed_by_zendesk(platform: ZendeskPlatform) -> None:
    body = fixture_bytes("event_ticket_created")
    platform.verify(signed(body), body)


def test_verify_reads_case_insensitive_starlette_headers(platform: ZendeskPlatform) -> None:
    body = fixture_bytes("event_ticket_created")
    headers = Headers(headers={name.title(): value for name, value in signed(body).items()})
    platform.verify(headers, body)


def test_signature_is_base64_hmac_sha256_of_timestamp_then_body() -> None:
    # Computed independently: printf '%s' '2024-01-15T12:34:50Z{"a":1}' |
    #   openssl dgst -sha256 -hmac secret -binary | base64
    signature = zendesk_signature("secret", timestamp="2024-01-15T12:34:50Z", body=b'{"a":1}')
    assert signature == "Czw5rP/btvUXeRemdqfUTiTEhn81hMLe2fyxJZEWtSU="


def test_verify_rejects_a_tampered_body(platform: ZendeskPlatform) -> None:
    body = fixture_bytes("event_ticket_created")
    tampered = body.replace(REQUESTER_ID.encode(), b"26310245981799")
    with pytest.raises(WebhookRejected, match="does not match"):
        platform.verify(signed(body), tampered)


def test_verify_rejects_a_wrong_secret(platform: ZendeskPlatform) -> None:
    body = fixture_bytes("event_ticket_created")
    with pytest.raises(WebhookRejected, match="does not match"):
        platform.verify(signed(body, secret="another-webhook-secret"), body)


@pytest.mark.parametrize(
    "missing",
    [
        ["x-zendesk-webhook-signature"],
        ["x-zendesk-webhook-signature-timestamp"],
        ["x-zendesk-webhook-signature", "x-zendesk-webhook-signature-timestamp"],
    ],
)
def test_verify_rejects_missing_headers(platform: ZendeskPlatform, missing: list[str]) -> None:
    body = fixture_bytes("event_ticket_created")
    headers = {k: v for k, v in signed(body).items() if k not in missing}
    with pytest.raises(WebhookRejected, match="required"):
        platform.verify(headers, body)


def test_verify_rejects_empty_header_values(platform: ZendeskPlatform) -> None:
    body = fixture_bytes("event_ticket_created")
    headers = {**signed(body), "x-zendesk-webhook-signature": ""}
    with pytest.raises(WebhookRejected, match="required"):
        platform.verify(headers, body)


@pytest.mark.parametrize(
    ("timestamp", "problem"),
    [
        ("1705322090", "ISO 8601"),
        ("yesterday", "ISO 8601"),
        ("2024-01-15T12:34:50", "time zone"),
        ("2024-01-15T12:34:50Z" + " " * 64, "too long"),
    ],
)
def test_verify_rejects_a_malformed_timestamp_even_when_signed(
    platform: ZendeskPlatform, timestamp: str, problem: str
) -> None:
    body = fixture_bytes("event_ticket_created")
    with pytest.raises(WebhookRejected, match=problem):
        platform.verify(with_timestamp(body, timestamp), body)


def test_verify_accepts_an_iso_timestamp_with_an_offset(platform: ZendeskPlatform) -> None:
    body = fixture_bytes("event_ticket_created")
    platform.verify(with_timestamp(body, "2024-01-15T13:34:50+01:00"), body)


@pytest.mark.parametrize("clock_offset_s", [-301.0, 301.0])
def test_verify_rejects_stale_and_future_timestamps(
    platform: ZendeskPlatform, clock: ManualClock, clock_offset_s: float
) -> None:
    body = fixture_bytes("event_ticket_created")
    headers = signed(body, when=NOW - clock_offset_s)
    with pytest.raises(WebhookRejected, match="5 minute"):
        platform.verify(headers, body)
    clock.advance(-clock_offset_s)  # the same request, at the time it was signed
    platform.verify(headers, body)


@pytest.mark.parametrize("clock_offset_s", [-299.0, 299.0])
def test_verify_accepts_a_timestamp_inside_the_window(
    platform: ZendeskPlatform, clock_offset_s: float
) -> None:
    body = fixture_bytes("event_ticket_created")
    platform.verify(signed(body, when=NOW + clock_offset_s), body)


def test_verify_rejects_an_empty_body_sent_with_another_body_signature(
    platform: ZendeskPlatform,
) -> None:
    headers = signed(fixture_bytes("event_ticket_created"))
    with pytest.raises(WebhookRejected, match="does not match"):
        platform.verify(headers, b"")


async def test_a_signed_empty_body_is_authentic_but_invalid(platform: ZendeskPlatform) -> None:
    headers = signed(b"")
    platform.verify(headers, b"")
    with pytest.raises(InvalidWebhook, match="not valid JSON"):
        await platform.parse(headers, b"")


# --- parse: event subscriptions ---


async def test_ticket_created_is_a_new_link_for_the_looked_up_requester(
    platform: ZendeskPlatform, users: respx.Route
) -> None:
    body = fixture_bytes("event_ticket_created")
    event = await platform.parse(signed(body), body)
    assert event.event is LinkEvent.NEW
    assert event.conversation_id == TICKET_ID
    assert (event.user_id, event.email, event.session_id) == (EXTERNAL_ID, REQUESTER_EMAIL, None)
    # The event's own id: signed, and the same when Zendesk re-signs a retry.
    assert event.delivery_id == "7f3b2a4e-5c61-4d2e-9a8f-2b1c0e6d4f93"
    assert users.call_count == 1
    request = users.calls.last.request
    assert request.method == "GET"
    assert request.headers["authorization"] == BASIC
    assert request.headers["accept"] == "application/json"


async def test_a_second_event_for_the_same_requester_uses_the_cache(
    platform: ZendeskPlatform, users: respx.Route, clock: ManualClock
) -> None:
    created = fixture_bytes("event_ticket_created")
    replied = fixture_bytes("event_comment_added_by_requester")
    before = (lookups("found"), lookups("cached"))
    await platform.parse(signed(created), created)
    clock.advance(REQUESTER_CACHE_TTL_S - 1)
    event = await platform.parse(signed(replied, invocation_id="8350205583"), replied)
    assert (event.user_id, event.email) == (EXTERNAL_ID, REQUESTER_EMAIL)
    assert users.call_count == 1
    assert (lookups("found"), lookups("cached")) == (before[0] + 1, before[1] + 1)


async def test_the_requester_is_looked_up_again_once_the_cache_entry_expires(
    platform: ZendeskPlatform, users: respx.Route, clock: ManualClock
) -> None:
    body = fixture_bytes("event_ticket_created")
    await platform.parse(signed(body), body)
    clock.advance(REQUESTER_CACHE_TTL_S)
    await platform.parse(signed(body, when=clock.now()), body)
    assert users.call_count == 2


async def test_comment_added_by_the_requester_is_reply_existing(
    platform: ZendeskPlatform, users: respx.Route
) -> None:
    body = fixture_bytes("event_comment_added_by_requester")
    event = await platform.parse(signed(body), body)
    assert event.event is LinkEvent.REPLY_EXISTING
    assert event.conversation_id == TICKET_ID
    assert (event.user_id, event.email) == (EXTERNAL_ID, REQUESTER_EMAIL)


async def test_our_own_private_note_coming_back_is_ignored(
    platform: ZendeskPlatform, zendesk: respx.MockRouter
) -> None:
    body = fixture_bytes("event_comment_added_private_note")
    event = await platform.parse(signed(body), body)
    assert event.event is None
    assert event.reason == "the comment is not the requester's"
    assert event.delivery_id == "0b6d93f1-8e27-4c5a-a3d9-7f14e2b6c850"
    assert not zendesk.calls


@pytest.mark.parametrize(
    ("author_id", "is_staff"),
    [
        ("401266377912", True),  # the assigned agent
        ("26310245980002", False),  # another end user, e.g. a CC
        (REQUESTER_ID, True),  # an agent who is also the requester
    ],
)
async def test_comments_by_anyone_but_the_end_user_requester_are_ignored(
    platform: ZendeskPlatform, zendesk: respx.MockRouter, author_id: str, is_staff: bool
) -> None:
    body = comment_event(author_id=author_id, is_staff=is_staff)
    event = await platform.parse(signed(body), body)
    assert event.event is None
    assert not zendesk.calls


async def test_a_comment_without_an_author_is_ignored(
    platform: ZendeskPlatform, zendesk: respx.MockRouter
) -> None:
    data = fixture("event_comment_added_by_requester")
    del data["event"]["comment"]["author"]
    event = await platform.parse({}, encode(data))
    assert event.event is None


@pytest.mark.parametrize(
    "event_type",
    ["zen:event-type:ticket.status_changed", "zen:event-type:user.created"],
)
async def test_other_event_types_are_ignored_without_reading_them(
    platform: ZendeskPlatform, zendesk: respx.MockRouter, event_type: str
) -> None:
    body = encode({"type": event_type, "id": "2b0f5c1e-aa31-4c8e-9d7e-5f0e3b7c1a22"})
    event = await platform.parse({}, body)
    assert event.event is None
    assert event.reason == f"event {event_type!r} is not link-eligible"
    assert event.delivery_id == "2b0f5c1e-aa31-4c8e-9d7e-5f0e3b7c1a22"
    assert not zendesk.calls


async def test_delivery_id_falls_back_to_the_event_id(
    platform: ZendeskPlatform, users: respx.Route
) -> None:
    event = await platform.parse({}, fixture_bytes("event_ticket_created"))
    assert event.delivery_id == "7f3b2a4e-5c61-4d2e-9a8f-2b1c0e6d4f93"


async def test_numeric_ids_are_read_as_strings(
    platform: ZendeskPlatform, users: respx.Route
) -> None:
    data = fixture("event_ticket_created")
    data["detail"].update(id=48213, requester_id=26310245981713)
    event = await platform.parse({}, encode(data))
    assert event.conversation_id == TICKET_ID
    assert event.user_id == EXTERNAL_ID


async def test_a_ticket_without_a_requester_links_by_nothing(
    platform: ZendeskPlatform, zendesk: respx.MockRouter
) -> None:
    data = fixture("event_ticket_created")
    data["detail"]["requester_id"] = None
    event = await platform.parse({}, encode(data))
    assert event.event is LinkEvent.NEW
    assert (event.user_id, event.email) == (None, None)
    assert not zendesk.calls


async def test_a_requester_without_external_id_is_found_by_email(
    platform: ZendeskPlatform, zendesk: respx.MockRouter
) -> None:
    user = fixture("show_user")
    user["user"]["external_id"] = None
    zendesk.get(USER_URL).respond(200, json=user)
    event = await platform.parse({}, fixture_bytes("event_ticket_created"))
    assert (event.user_id, event.email) == (None, REQUESTER_EMAIL)


async def test_a_deleted_requester_links_by_nothing_and_is_not_asked_again(
    platform: ZendeskPlatform, zendesk: respx.MockRouter
) -> None:
    route = zendesk.get(USER_URL).respond(404, json={"error": "RecordNotFound"})
    body = fixture_bytes("event_ticket_created")
    event = await platform.parse({}, body)
    assert event.event is LinkEvent.NEW
    assert (event.user_id, event.email) == (None, None)
    await platform.parse({}, body)
    assert route.call_count == 1


@pytest.mark.parametrize(
    ("response", "retry_after_s"),
    [
        (httpx.Response(429, headers={"Retry-After": "30"}), 30.0),
        (httpx.Response(429), None),
        (httpx.Response(503), None),
    ],
)
async def test_a_failed_lookup_is_retryable_and_not_cached(
    platform: ZendeskPlatform,
    zendesk: respx.MockRouter,
    response: httpx.Response,
    retry_after_s: float | None,
) -> None:
    success = httpx.Response(200, content=fixture_bytes("show_user"))
    route = zendesk.get(USER_URL).mock(side_effect=[response, success])
    body = fixture_bytes("event_ticket_created")
    failed = lookups("failed")
    with pytest.raises(RetryableDeliveryError) as caught:
        await platform.parse({}, body)
    assert caught.value.retry_after_s == retry_after_s
    assert lookups("failed") == failed + 1
    event = await platform.parse({}, body)
    assert event.user_id == EXTERNAL_ID
    assert route.call_count == 2


async def test_a_lookup_refused_for_good_still_fails_the_webhook(
    platform: ZendeskPlatform, zendesk: respx.MockRouter
) -> None:
    zendesk.get(USER_URL).respond(403)
    with pytest.raises(PermanentDeliveryError):
        await platform.parse({}, fixture_bytes("event_ticket_created"))


async def test_a_slow_lookup_times_out_as_retryable(
    platform: ZendeskPlatform, zendesk: respx.MockRouter
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(1)
        return httpx.Response(200, content=fixture_bytes("show_user"))

    zendesk.get(USER_URL).mock(side_effect=slow)
    platform.lookup_timeout_s = 0.05
    with pytest.raises(RetryableDeliveryError, match="timed out"):
        await platform.parse({}, fixture_bytes("event_ticket_created"))


async def test_a_lookup_connection_error_is_retryable(
    platform: ZendeskPlatform, zendesk: respx.MockRouter
) -> None:
    zendesk.get(USER_URL).mock(side_effect=httpx.ConnectError("connection refused"))
    with pytest.raises(RetryableDeliveryError):
        await platform.parse({}, fixture_bytes("event_ticket_created"))


# --- parse: trigger bodies ---


async def test_trigger_body_with_a_session_id(
    platform: ZendeskPlatform, zendesk: respx.MockRouter
) -> None:
    body = fixture_bytes("trigger_ticket_created")
    event = await platform.parse(signed(body), body)
    assert event.event is LinkEvent.NEW
    assert event.conversation_id == TICKET_ID
    assert event.session_id == "0190f3a2-7c41-7d2e-b1a4-9e5f2c8d6a31"
    assert (event.user_id, event.email) == (EXTERNAL_ID, REQUESTER_EMAIL)
    # A trigger body has no id of its own: the digest of what the signature covers.
    headers = signed(body)
    assert event.delivery_id == signed_delivery_id(headers, body)
    assert (await platform.parse(headers, body)).delivery_id == event.delivery_id
    other = signed(body, when=NOW + 1, invocation_id="8350205583")
    assert (await platform.parse(other, body)).delivery_id != event.delivery_id
    assert not zendesk.calls


async def test_trigger_placeholders_left_empty_or_unrendered_count_as_absent(
    platform: ZendeskPlatform,
) -> None:
    event = await platform.parse({}, fixture_bytes("trigger_unrendered"))
    assert event.event is LinkEvent.REPLY_EXISTING
    assert event.conversation_id == TICKET_ID
    assert (event.session_id, event.user_id) == (None, None)
    assert event.email == REQUESTER_EMAIL


@pytest.mark.parametrize(
    ("name", "link_event"),
    [
        ("ticket.created", LinkEvent.NEW),
        ("ticket.comment_added", LinkEvent.REPLY_EXISTING),
        ("ticket.updated", LinkEvent.REPLY_EXISTING),
        ("ticket.solved", None),
    ],
)
async def test_trigger_event_names(
    platform: ZendeskPlatform, name: str, link_event: LinkEvent | None
) -> None:
    event = await platform.parse({}, encode({"event": name, "ticket_id": TICKET_ID}))
    assert event.event is link_event


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"ticket_id": 48213}, {"conversation_id": TICKET_ID}),
        ({"session_id": "has spaces"}, {"session_id": None}),
        ({"session_id": "s" * 129}, {"session_id": None}),
        ({"session_id": "  sess-9  "}, {"session_id": "sess-9"}),
        ({"requester_external_id": "{{ticket.requester.external_id}}"}, {"user_id": None}),
        ({"requester_external_id": 1234}, {"user_id": "1234"}),
        ({"requester_email": "   "}, {"email": None}),
        ({"requester_email": ["a@example.com"]}, {"email": None}),
    ],
)
async def test_trigger_field_values(
    platform: ZendeskPlatform, fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    data = {**fixture("trigger_ticket_created"), **fields}
    event = await platform.parse({}, encode(data))
    for name, value in expected.items():
        assert getattr(event, name) == value


@pytest.mark.parametrize("ticket_id", [None, "", "{{ticket.id}}", "t" * 257])
async def test_a_trigger_without_a_usable_ticket_id_is_invalid(
    platform: ZendeskPlatform, ticket_id: Any
) -> None:
    data = {**fixture("trigger_ticket_created"), "ticket_id": ticket_id}
    with pytest.raises(InvalidWebhook, match="ticket_id"):
        await platform.parse({}, encode(data))


# --- parse: bodies that cannot be understood ---


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (b"{}", "expected a Zendesk event"),
        (b'{"type": "ticket.created"}', "expected a Zendesk event"),
        (b'{"event": 7, "ticket_id": "1"}', "'event' must be a string"),
        (b'{"type": "zen:event-type:ticket.created"}', "detail"),
        (b'{"type": "zen:event-type:ticket.created", "detail": {}}', r"detail\.id"),
        (b'{"type": "zen:event-type:ticket.created", "detail": {"id": ""}}', r"detail\.id"),
    ],
)
async def test_parse_rejects_bodies_it_cannot_understand(
    platform: ZendeskPlatform, body: bytes, problem: str
) -> None:
    with pytest.raises(InvalidWebhook, match=problem):
        await platform.parse({}, body)


async def test_the_unsigned_invocation_id_plays_no_part_in_the_delivery_id(
    platform: ZendeskPlatform,
) -> None:
    body = fixture_bytes("trigger_ticket_created")
    first = await platform.parse(signed(body), body)
    replay = await platform.parse(signed(body, invocation_id="9" * 257), body)
    assert replay.delivery_id == first.delivery_id


# --- post_note ---


async def test_post_note_adds_a_private_comment(
    platform: ZendeskPlatform, zendesk: respx.MockRouter
) -> None:
    route = zendesk.put(TICKET_URL).respond(200, content=fixture_bytes("update_ticket"))
    note = make_note()
    assert await platform.post_note(note) == "26311870522001"
    request = route.calls.last.request
    assert request.method == "PUT"
    assert str(request.url) == TICKET_URL
    assert request.headers["authorization"] == BASIC
    assert request.headers["accept"] == "application/json"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "ticket": {"comment": {"body": note.body, "public": False}}
    }


@pytest.mark.parametrize(
    "overrides",
    [
        {"oauth_token": OAUTH_TOKEN, "email": None, "api_token": None},
        {"oauth_token": OAUTH_TOKEN},
    ],
)
async def test_post_note_uses_the_oauth_token_as_bearer_when_configured(
    client: httpx.AsyncClient,
    clock: ManualClock,
    zendesk: respx.MockRouter,
    overrides: dict[str, Any],
) -> None:
    route = zendesk.put(TICKET_URL).respond(200, content=fixture_bytes("update_ticket"))
    platform = ZendeskPlatform(make_product(**overrides), client, clock)
    await platform.post_note(make_note())
    assert route.calls.last.request.headers["authorization"] == f"Bearer {OAUTH_TOKEN}"


async def test_post_note_uses_api_base_and_escapes_the_ticket_id(
    client: httpx.AsyncClient, clock: ManualClock, zendesk: respx.MockRouter
) -> None:
    route = zendesk.route().respond(200, json={})
    product = make_product(subdomain=None, api_base="http://127.0.0.1:8931/zd/")
    platform = ZendeskPlatform(product, client, clock)
    await platform.post_note(make_note(conversation_id="48/../1?x"))
    url = route.calls.last.request.url
    assert (url.host, url.port) == ("127.0.0.1", 8931)
    assert url.raw_path == b"/zd/api/v2/tickets/48%2F..%2F1%3Fx.json"


@pytest.mark.parametrize(
    ("response", "note_id"),
    [
        (
            httpx.Response(
                200,
                json={
                    "audit": {
                        "events": [
                            {"id": 7, "type": "Change"},
                            {"id": 8, "type": "Comment", "public": False},
                        ]
                    }
                },
            ),
            "8",
        ),
        (httpx.Response(200, json={"audit": {"events": [{"id": 7, "type": "Change"}]}}), None),
        (httpx.Response(200, json={"ticket": {"id": 48213}}), None),
        (httpx.Response(200, json={"audit": {"events": "Comment"}}), None),
        (httpx.Response(200, json=[]), None),
        (httpx.Response(200, text="ok"), None),
    ],
)
async def test_post_note_takes_the_note_id_from_the_audit_comment_event(
    platform: ZendeskPlatform,
    zendesk: respx.MockRouter,
    response: httpx.Response,
    note_id: str | None,
) -> None:
    zendesk.put(TICKET_URL).mock(return_value=response)
    assert await platform.post_note(make_note()) == note_id


@pytest.mark.parametrize(("headers", "retry_after_s"), [({"Retry-After": "42"}, 42.0), ({}, None)])
async def test_post_note_rate_limit_is_retryable_with_the_retry_after_hint(
    platform: ZendeskPlatform,
    zendesk: respx.MockRouter,
    headers: dict[str, str],
    retry_after_s: float | None,
) -> None:
    zendesk.put(TICKET_URL).respond(429, headers=headers)
    with pytest.raises(RetryableDeliveryError) as caught:
        await platform.post_note(make_note())
    assert caught.value.retry_after_s == retry_after_s


@pytest.mark.parametrize("status", [409, 500, 503])
async def test_post_note_conflicts_and_server_errors_are_retryable(
    platform: ZendeskPlatform, zendesk: respx.MockRouter, status: int
) -> None:
    zendesk.put(TICKET_URL).respond(status)
    with pytest.raises(RetryableDeliveryError):
        await platform.post_note(make_note())


@pytest.mark.parametrize("status", [400, 401, 403, 422])
async def test_post_note_other_client_errors_are_permanent(
    platform: ZendeskPlatform, zendesk: respx.MockRouter, status: int
) -> None:
    zendesk.put(TICKET_URL).respond(status)
    with pytest.raises(PermanentDeliveryError) as caught:
        await platform.post_note(make_note())
    assert not isinstance(caught.value, ConversationNotFound)


async def test_post_note_404_means_the_ticket_is_gone(
    platform: ZendeskPlatform, zendesk: respx.MockRouter
) -> None:
    zendesk.put(TICKET_URL).respond(404)
    with pytest.raises(ConversationNotFound):
        await platform.post_note(make_note())


async def test_redact_is_a_no_op(platform: ZendeskPlatform, zendesk: respx.MockRouter) -> None:
    await platform.redact_note(TICKET_ID, "26311870522001")
    assert not zendesk.calls


# --- registry ---


def test_build_platform_builds_the_zendesk_adapter(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    assert isinstance(build_platform(make_product(), client, clock), ZendeskPlatform)


def test_the_adapter_needs_a_zendesk_section(client: httpx.AsyncClient, clock: ManualClock) -> None:
    product = ProductConfig.model_construct(id="globex", platform="zendesk", settings=None)
    with pytest.raises(ValueError, match=r"\[zendesk\]"):
        ZendeskPlatform(product, client, clock)


# --- through the webhook route, over a real Redis ---


def bridge_product() -> ProductConfig:
    return make_bridge_product("globex", platform="zendesk", zendesk=zendesk_section())


async def post_event(
    client: httpx.AsyncClient, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    return await client.post("/chatbot-webhook/globex", content=body, headers=headers)


async def test_route_links_a_signed_ticket_created_and_posts_the_flush_comment(
    redis_client: aioredis.Redis, users: respx.Route, zendesk: respx.MockRouter
) -> None:
    comments = zendesk.put(TICKET_URL).respond(200, content=fixture_bytes("update_ticket"))
    clock = ManualClock(NOW)
    async with running_app(
        products=[bridge_product()], clock=clock, redis_client=redis_client
    ) as bridge:
        r = await bridge.post_batch(
            "globex", batch("s1", ("Opened export", NOW), user_id=EXTERNAL_ID)
        )
        assert r.status_code == 202, r.text
        body = fixture_bytes("event_ticket_created")
        r = await post_event(bridge.client, body, signed(body))
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "linked", "session_id": "s1", "conversation_id": TICKET_ID}
        assert await bridge.deliver() == 1
    comment = json.loads(comments.calls.last.request.content)["ticket"]["comment"]
    assert comment == {
        "body": "session_id: s1\ntimestamp: 2024-01-15 12:34:50 UTC\n\n[1] Opened export",
        "public": False,
    }


async def test_route_answers_a_replayed_invocation_as_duplicate(
    redis_client: aioredis.Redis, users: respx.Route
) -> None:
    async with running_app(
        products=[bridge_product()], clock=ManualClock(NOW), redis_client=redis_client
    ) as bridge:
        await bridge.post_batch("globex", batch("s1", ("Opened export", NOW), user_id=EXTERNAL_ID))
        body = fixture_bytes("event_ticket_created")
        first = await post_event(bridge.client, body, signed(body))
        again = await post_event(bridge.client, body, signed(body))
    assert first.json()["status"] == "linked"
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "session_id": "s1", "conversation_id": TICKET_ID}


async def test_route_answers_a_replay_with_a_fresh_invocation_id_as_duplicate(
    redis_client: aioredis.Redis, users: respx.Route
) -> None:
    """The invocation id is not signed: a replayed trigger with a new one must not act again."""
    async with running_app(
        products=[bridge_product()], clock=ManualClock(NOW), redis_client=redis_client
    ) as bridge:
        await bridge.post_batch("globex", batch("s1", ("Opened export", NOW), user_id=EXTERNAL_ID))
        body = fixture_bytes("trigger_ticket_created")
        first = await post_event(bridge.client, body, signed(body))
        replay = await post_event(bridge.client, body, signed(body, invocation_id="8350205599"))
        state = await bridge.client.get(
            "/sessions/globex/0190f3a2-7c41-7d2e-b1a4-9e5f2c8d6a31",
            headers={"authorization": f"Bearer {INGEST_TOKEN}"},
        )
    assert first.json()["status"] == "linked"
    assert replay.json()["status"] == "duplicate"
    assert state.json()["current_state"] == "reactive_assistance"


async def test_route_rejects_a_bad_signature_and_links_nothing(
    redis_client: aioredis.Redis, users: respx.Route
) -> None:
    async with running_app(
        products=[bridge_product()], clock=ManualClock(NOW), redis_client=redis_client
    ) as bridge:
        body = fixture_bytes("event_ticket_created")
        r = await post_event(bridge.client, body, signed(body, secret="not-the-secret"))
        assert r.status_code == 401
        assert r.json()["error"] == "invalid_signature"
        r = await bridge.post_batch(
            "globex", batch("s1", ("Opened export", NOW), user_id=EXTERNAL_ID)
        )
        assert r.json()["linked"] is False
    assert not users.called


async def test_route_asks_zendesk_to_retry_when_the_lookup_fails(
    redis_client: aioredis.Redis, zendesk: respx.MockRouter
) -> None:
    zendesk.get(USER_URL).mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "10"}),
            httpx.Response(200, content=fixture_bytes("show_user")),
        ]
    )
    async with running_app(
        products=[bridge_product()], clock=ManualClock(NOW), redis_client=redis_client
    ) as bridge:
        await bridge.post_batch("globex", batch("s1", ("Opened export", NOW), user_id=EXTERNAL_ID))
        body = fixture_bytes("event_ticket_created")
        failed = await post_event(bridge.client, body, signed(body))
        retried = await post_event(bridge.client, body, signed(body))
    assert failed.status_code == 503
    assert retried.json()["status"] == "linked"
