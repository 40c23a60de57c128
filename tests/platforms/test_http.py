import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx
from starlette.datastructures import Headers

from app.domain import LinkEvent, Note
from app.platforms import UnknownPlatform, build_platform
from app.platforms.base import (
    ConversationNotFound,
    InvalidWebhook,
    PermanentDeliveryError,
    RetryableDeliveryError,
    WebhookRejected,
)
from app.platforms.http import HttpPlatform
from app.products import ProductConfig
from app.security import standard_webhook_headers, verify_standard_webhook

NOW = 1_700_000_000.0
WEBHOOK_KEY = bytes(range(32))
SIGNING_KEY = bytes(range(32, 64))
BOT_URL = "https://bot.example.test/notes"
REDACT_URL = "https://bot.example.test/notes/redact"


class FixedClock:
    def __init__(self, now: float = NOW) -> None:
        self.current = now

    def now(self) -> float:
        return self.current


def whsec(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


def make_product(**http: Any) -> ProductConfig:
    section = {
        "url": BOT_URL,
        "signing_secret": whsec(SIGNING_KEY),
        "webhook_secret": whsec(WEBHOOK_KEY),
        **http,
    }
    return ProductConfig.model_validate(
        {
            "id": "acme",
            "platform": "http",
            "ingest_token": "ingest-token-0123456789abcdef",
            "http": section,
        }
    )


def make_note(**overrides: Any) -> Note:
    fields: dict[str, Any] = {
        "product_id": "acme",
        "session_id": "sess-1",
        "conversation_id": "conv-1",
        "kind": "postlink",
        "body": "session_id: sess-1\ntimestamp: 2023-11-14 22:13:20 UTC\n\n[1] User clicked Save",
        "delivery_id": "note_abc",
        "actions": ({"description": "User clicked Save", "timestamp_start": NOW},),
        **overrides,
    }
    return Note(**fields)


def bot_body(**fields: Any) -> bytes:
    return json.dumps(
        {"event": "conversation.created", "conversation_id": "conv-1", **fields}
    ).encode()


def signed(body: bytes, *, key: bytes = WEBHOOK_KEY, timestamp: int = int(NOW)) -> dict[str, str]:
    return standard_webhook_headers(key, msg_id="msg_1", timestamp=timestamp, body=body)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http_client:
        yield http_client


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def platform(client: httpx.AsyncClient, clock: FixedClock) -> HttpPlatform:
    return HttpPlatform(make_product(redact_url=REDACT_URL), client, clock)


@pytest.fixture
def bot() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


# --- verify ---


def test_verify_accepts_a_webhook_signed_with_the_webhook_secret(platform: HttpPlatform) -> None:
    body = bot_body()
    platform.verify(signed(body), body)


def test_verify_reads_case_insensitive_starlette_headers(platform: HttpPlatform) -> None:
    body = bot_body()
    headers = Headers(headers={name.title(): value for name, value in signed(body).items()})
    platform.verify(headers, body)


def test_verify_rejects_a_tampered_body(platform: HttpPlatform) -> None:
    body = bot_body()
    with pytest.raises(WebhookRejected, match="signature"):
        platform.verify(signed(body), bot_body(session_id="someone-else"))


def test_verify_rejects_a_webhook_signed_with_the_outbound_signing_secret(
    platform: HttpPlatform,
) -> None:
    body = bot_body()
    with pytest.raises(WebhookRejected):
        platform.verify(signed(body, key=SIGNING_KEY), body)


def test_verify_rejects_an_unsigned_webhook(platform: HttpPlatform) -> None:
    with pytest.raises(WebhookRejected, match="required"):
        platform.verify({}, bot_body())


@pytest.mark.parametrize("clock_offset_s", [-301.0, 301.0])
def test_verify_uses_the_injected_clock_for_the_replay_window(
    platform: HttpPlatform, clock: FixedClock, clock_offset_s: float
) -> None:
    body = bot_body()
    headers = signed(body)
    platform.verify(headers, body)
    clock.current = NOW + clock_offset_s
    with pytest.raises(WebhookRejected, match="tolerance"):
        platform.verify(headers, body)


# --- parse ---


async def test_parse_maps_conversation_created_to_a_new_link(platform: HttpPlatform) -> None:
    body = bot_body(session_id="sess-1", user_id="user-7", email="a@example.test", id="evt_1")
    event = await platform.parse({"webhook-id": "msg_1"}, body)
    assert event.event is LinkEvent.NEW
    assert event.conversation_id == "conv-1"
    assert (event.session_id, event.user_id, event.email) == ("sess-1", "user-7", "a@example.test")
    assert event.delivery_id == "msg_1"


async def test_parse_maps_conversation_replied_to_reply_existing(platform: HttpPlatform) -> None:
    event = await platform.parse({}, bot_body(event="conversation.replied"))
    assert event.event is LinkEvent.REPLY_EXISTING
    assert event.conversation_id == "conv-1"
    assert event.session_id is None


async def test_parse_ignores_an_event_that_is_not_link_eligible(platform: HttpPlatform) -> None:
    body = json.dumps({"event": "conversation.closed"}).encode()
    event = await platform.parse({"webhook-id": "msg_1"}, body)
    assert event.event is None
    assert event.reason == "event 'conversation.closed' is not link-eligible"
    assert event.delivery_id == "msg_1"


async def test_parse_takes_the_body_id_when_there_is_no_webhook_id(platform: HttpPlatform) -> None:
    event = await platform.parse({}, bot_body(id="evt_9"))
    assert event.delivery_id == "evt_9"


async def test_parse_has_no_delivery_id_without_header_or_body_id(platform: HttpPlatform) -> None:
    event = await platform.parse({}, bot_body())
    assert event.delivery_id is None


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'"conversation.created"', "JSON object"),
        (b'{"conversation_id": "conv-1"}', "'event' must be a string"),
        (b'{"event": 1, "conversation_id": "conv-1"}', "'event' must be a string"),
        (b'{"event": "conversation.created"}', "conversation_id"),
        (b'{"event": "conversation.created", "conversation_id": 42}', "conversation_id"),
        (b'{"event": "conversation.created", "conversation_id": ""}', "conversation_id"),
    ],
)
async def test_parse_rejects_bodies_it_cannot_understand(
    platform: HttpPlatform, body: bytes, problem: str
) -> None:
    with pytest.raises(InvalidWebhook, match=problem):
        await platform.parse({}, body)


@pytest.mark.parametrize(
    "fields",
    [
        {"conversation_id": "c" * 257},
        {"session_id": "has spaces"},
        {"session_id": "s" * 129},
        {"session_id": 12345},
        {"user_id": 7},
        {"email": ["a@example.test"]},
        {"id": ""},
    ],
)
async def test_parse_validates_field_types_and_limits(
    platform: HttpPlatform, fields: dict[str, Any]
) -> None:
    field = next(iter(fields))
    with pytest.raises(InvalidWebhook, match=rf"\b{field}: "):
        await platform.parse({}, bot_body(**fields))


async def test_parse_rejects_an_overlong_webhook_id(platform: HttpPlatform) -> None:
    with pytest.raises(InvalidWebhook, match="webhook-id"):
        await platform.parse({"webhook-id": "m" * 257}, bot_body())


async def test_parse_ignores_unknown_fields(platform: HttpPlatform) -> None:
    event = await platform.parse({}, bot_body(channel="web", extra={"nested": True}))
    assert event.event is LinkEvent.NEW


# --- post_note ---


async def test_post_note_sends_the_signed_json_note(
    platform: HttpPlatform, bot: respx.MockRouter
) -> None:
    route = bot.post(BOT_URL).respond(200, json={"id": "n1"})
    note = make_note()
    await platform.post_note(note)
    request = route.calls.last.request
    assert request.method == "POST"
    assert str(request.url) == BOT_URL
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "type": "note",
        "product_id": "acme",
        "session_id": "sess-1",
        "conversation_id": "conv-1",
        "kind": "actions",
        "body": note.body,
        "actions": [{"description": "User clicked Save", "timestamp_start": NOW}],
    }
    assert request.headers["webhook-id"] == "note_abc"
    assert request.headers["webhook-timestamp"] == str(int(NOW))
    verify_standard_webhook(request.headers, key=SIGNING_KEY, body=request.content, now=NOW)


async def test_post_note_sends_compact_json(platform: HttpPlatform, bot: respx.MockRouter) -> None:
    route = bot.post(BOT_URL).respond(200)
    await platform.post_note(make_note())
    assert b", " not in route.calls.last.request.content
    assert b'"type":"note"' in route.calls.last.request.content


@pytest.mark.parametrize(
    ("kind", "wire_kind"), [("prelink", "actions"), ("postlink", "actions"), ("summary", "summary")]
)
async def test_post_note_names_the_kind_for_the_bot(
    platform: HttpPlatform, bot: respx.MockRouter, kind: str, wire_kind: str
) -> None:
    route = bot.post(BOT_URL).respond(200)
    await platform.post_note(make_note(kind=kind))
    assert json.loads(route.calls.last.request.content)["kind"] == wire_kind


async def test_post_note_keeps_the_webhook_id_across_retries(
    platform: HttpPlatform, bot: respx.MockRouter, clock: FixedClock
) -> None:
    route = bot.post(BOT_URL).respond(200)
    note = make_note()
    await platform.post_note(note)
    clock.current += 30
    await platform.post_note(note)
    first, second = (call.request for call in route.calls)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == note.delivery_id
    assert first.headers["webhook-timestamp"] != second.headers["webhook-timestamp"]


@pytest.mark.parametrize(
    ("response", "note_id"),
    [
        (httpx.Response(200, json={"id": "n1"}), "n1"),
        (httpx.Response(201, json={"id": 42}), "42"),
        (httpx.Response(200, json={}), None),
        (httpx.Response(200, json={"id": None}), None),
        (httpx.Response(200, json={"id": True}), None),
        (httpx.Response(200, json=["n1"]), None),
        (httpx.Response(200, text="ok"), None),
        (httpx.Response(204), None),
    ],
)
async def test_post_note_returns_the_bot_note_id_when_there_is_one(
    platform: HttpPlatform, bot: respx.MockRouter, response: httpx.Response, note_id: str | None
) -> None:
    bot.post(BOT_URL).mock(return_value=response)
    assert await platform.post_note(make_note()) == note_id


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_post_note_server_errors_are_retryable(
    platform: HttpPlatform, bot: respx.MockRouter, status: int
) -> None:
    bot.post(BOT_URL).respond(status)
    with pytest.raises(RetryableDeliveryError):
        await platform.post_note(make_note())


async def test_post_note_rate_limit_carries_the_retry_after_hint(
    platform: HttpPlatform, bot: respx.MockRouter
) -> None:
    bot.post(BOT_URL).respond(429, headers={"Retry-After": "7"})
    with pytest.raises(RetryableDeliveryError) as caught:
        await platform.post_note(make_note())
    assert caught.value.retry_after_s == 7


async def test_post_note_404_means_the_conversation_is_gone(
    platform: HttpPlatform, bot: respx.MockRouter
) -> None:
    bot.post(BOT_URL).respond(404)
    with pytest.raises(ConversationNotFound):
        await platform.post_note(make_note())


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_post_note_other_client_errors_are_permanent(
    platform: HttpPlatform, bot: respx.MockRouter, status: int
) -> None:
    bot.post(BOT_URL).respond(status)
    with pytest.raises(PermanentDeliveryError) as caught:
        await platform.post_note(make_note())
    assert not isinstance(caught.value, ConversationNotFound)


async def test_post_note_connection_failure_is_retryable(
    platform: HttpPlatform, bot: respx.MockRouter
) -> None:
    bot.post(BOT_URL).mock(side_effect=httpx.ConnectError("connection refused"))
    with pytest.raises(RetryableDeliveryError) as caught:
        await platform.post_note(make_note())
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_post_note_with_unencodable_actions_is_permanent(
    platform: HttpPlatform, bot: respx.MockRouter
) -> None:
    route = bot.post(BOT_URL).respond(200)
    with pytest.raises(PermanentDeliveryError, match="JSON"):
        await platform.post_note(make_note(actions=({"timestamp_start": float("nan")},)))
    assert not route.called


# --- redact_note ---


async def test_redact_posts_the_signed_note_reference_to_redact_url(
    platform: HttpPlatform, bot: respx.MockRouter
) -> None:
    route = bot.post(REDACT_URL).respond(200)
    await platform.redact_note("conv-1", "n1")
    request = route.calls.last.request
    assert json.loads(request.content) == {"conversation_id": "conv-1", "note_id": "n1"}
    assert request.headers["webhook-id"] == "redact_n1"
    verify_standard_webhook(request.headers, key=SIGNING_KEY, body=request.content, now=NOW)


async def test_redact_without_redact_url_makes_no_call(
    client: httpx.AsyncClient, clock: FixedClock, bot: respx.MockRouter
) -> None:
    route = bot.route().respond(200)
    platform = HttpPlatform(make_product(), client, clock)
    await platform.redact_note("conv-1", "n1")
    assert not route.called


async def test_redact_failure_is_typed(platform: HttpPlatform, bot: respx.MockRouter) -> None:
    bot.post(REDACT_URL).respond(503)
    with pytest.raises(RetryableDeliveryError):
        await platform.redact_note("conv-1", "n1")


# --- registry ---


def test_build_platform_builds_the_http_adapter(
    client: httpx.AsyncClient, clock: FixedClock
) -> None:
    assert isinstance(build_platform(make_product(), client, clock), HttpPlatform)


def test_build_platform_names_an_unknown_platform(
    client: httpx.AsyncClient, clock: FixedClock
) -> None:
    product = ProductConfig.model_construct(id="acme", platform="carrier-pigeon")
    with pytest.raises(UnknownPlatform, match="carrier-pigeon"):
        build_platform(product, client, clock)


def test_the_bot_redacts_only_with_a_redact_url(
    client: httpx.AsyncClient, clock: FixedClock
) -> None:
    assert HttpPlatform(make_product(redact_url=REDACT_URL), client, clock).redacts
    assert not HttpPlatform(make_product(), client, clock).redacts
