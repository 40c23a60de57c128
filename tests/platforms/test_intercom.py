"""The Intercom adapter: X-Hub-Signature, notification parsing, the note and redact calls."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import respx
from starlette.datastructures import Headers

from app.domain import LinkEvent, Note
from app.platforms import build_platform
from app.platforms.base import (
    MAX_WAIT_HINT_S,
    ConversationNotFound,
    InvalidWebhook,
    PermanentDeliveryError,
    RetryableDeliveryError,
    WebhookRejected,
)
from app.platforms.intercom import IntercomPlatform
from app.products import ProductConfig
from tests.conftest import ManualClock, batch, make_product
from tests.harness import Harness, running_app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "intercom"
CLIENT_SECRET = "intercom-client-secret-0123456789"
ACCESS_TOKEN = "dG9rOjEyMzQ1Njc4OTA6YWNjZXNz"
ADMIN_ID = "7300412"
API_BASE = "https://api.intercom.io"
REPLY_URL = f"{API_BASE}/conversations/215468532190451/reply"
REDACT_URL = f"{API_BASE}/conversations/redact"
CREATED_SESSION = "0190f3c2-5b7e-7d4a-9c1e-3f2a8b6d4e10"
T0 = 1_718_031_520.0  # 2024-06-10 14:58:40 UTC


def raw_fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(raw_fixture(name))
    return data


def encode(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope).encode()


def signature(body: bytes, *, secret: str = CLIENT_SECRET, digest: str = "sha1") -> str:
    return hmac.new(secret.encode(), body, digest).hexdigest()


def signed(body: bytes, *, secret: str = CLIENT_SECRET) -> dict[str, str]:
    return {"x-hub-signature": f"sha1={signature(body, secret=secret)}"}


def intercom_product(product_id: str = "acme", **overrides: Any) -> ProductConfig:
    section: dict[str, Any] = {
        "access_token": ACCESS_TOKEN,
        "admin_id": ADMIN_ID,
        "client_secret": CLIENT_SECRET,
        "api_base": API_BASE,
        "api_version": "2.14",
        **overrides.pop("intercom", {}),
    }
    return make_product(product_id, platform="intercom", intercom=section, **overrides)


def make_note(**overrides: Any) -> Note:
    fields: dict[str, Any] = {
        "product_id": "acme",
        "session_id": "sess-1",
        "conversation_id": "215468532190451",
        "kind": "postlink",
        "body": "session_id: sess-1\ntimestamp: 2024-06-10 14:58:40 UTC\n\n[1] User clicked Save",
        "delivery_id": "note_abc",
        **overrides,
    }
    return Note(**fields)


def created_item(envelope: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = envelope["data"]["item"]
    return item


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http_client:
        yield http_client


@pytest.fixture
def platform(client: httpx.AsyncClient, clock: ManualClock) -> IntercomPlatform:
    return IntercomPlatform(intercom_product(), client, clock)


@pytest.fixture
def intercom() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


# --- verify ---


def test_verify_accepts_intercoms_signature_of_the_raw_body(platform: IntercomPlatform) -> None:
    body = raw_fixture("conversation_user_created")
    headers = Headers(headers={"X-Hub-Signature": f"sha1={signature(body)}"})
    platform.verify(headers, body)


def test_verify_accepts_an_uppercase_hex_digest(platform: IntercomPlatform) -> None:
    body = raw_fixture("ping")
    platform.verify({"x-hub-signature": f"sha1={signature(body).upper()}"}, body)


def test_verify_rejects_a_tampered_body(platform: IntercomPlatform) -> None:
    body = raw_fixture("conversation_user_created")
    tampered = body.replace(b"ph_user_7c1e", b"ph_user_0000")
    with pytest.raises(WebhookRejected, match="does not match"):
        platform.verify(signed(body), tampered)


def test_verify_rejects_another_algorithm_prefix(platform: IntercomPlatform) -> None:
    body = raw_fixture("conversation_user_created")
    header = f"sha256={signature(body, digest='sha256')}"
    with pytest.raises(WebhookRejected, match=r"sha1=<hex>"):
        platform.verify({"x-hub-signature": header}, body)


@pytest.mark.parametrize("header", [signature(b"{}"), "sha1=", "sha1", "=abc"])
def test_verify_rejects_a_malformed_header(platform: IntercomPlatform, header: str) -> None:
    with pytest.raises(WebhookRejected):
        platform.verify({"x-hub-signature": header}, b"{}")


def test_verify_rejects_a_missing_header(platform: IntercomPlatform) -> None:
    with pytest.raises(WebhookRejected, match="missing"):
        platform.verify({}, raw_fixture("ping"))


def test_verify_rejects_another_apps_secret(platform: IntercomPlatform) -> None:
    body = raw_fixture("ping")
    with pytest.raises(WebhookRejected, match="does not match"):
        platform.verify(signed(body, secret="another-apps-client-secret"), body)


def test_verify_rejects_an_empty_body_under_a_real_bodys_signature(
    platform: IntercomPlatform,
) -> None:
    with pytest.raises(WebhookRejected):
        platform.verify(signed(raw_fixture("ping")), b"")


async def test_an_empty_body_signed_correctly_is_authentic_but_invalid(
    platform: IntercomPlatform,
) -> None:
    platform.verify(signed(b""), b"")
    with pytest.raises(InvalidWebhook, match="not valid JSON"):
        await platform.parse(signed(b""), b"")


# --- parse ---


async def test_ping_is_ignored_and_deduplicated_by_body_hash(platform: IntercomPlatform) -> None:
    body = raw_fixture("ping")
    event = await platform.parse(signed(body), body)
    assert event.event is None
    assert event.reason == "ping"
    assert event.delivery_id == "sha256:" + hashlib.sha256(body).hexdigest()


async def test_user_created_is_a_new_link_with_every_identity(platform: IntercomPlatform) -> None:
    event = await platform.parse({}, raw_fixture("conversation_user_created"))
    assert event.event is LinkEvent.NEW
    assert event.delivery_id == "notif_3b1f6c2e-8a4d-4e7b-9f0a-5c6d7e8f9a01"
    assert event.conversation_id == "215468532190451"
    assert event.user_id == "ph_user_7c1e"
    assert event.email == "dana.li@example.com"
    assert event.session_id == CREATED_SESSION


async def test_user_replied_is_reply_existing_with_the_customers_email(
    platform: IntercomPlatform,
) -> None:
    # An admin started this conversation: the source author's email is the admin's.
    event = await platform.parse({}, raw_fixture("conversation_user_replied"))
    assert event.event is LinkEvent.REPLY_EXISTING
    assert event.delivery_id == "notif_9a0c4d1e-2b3f-4c5d-8e6f-7a8b9c0d1e2f"
    assert event.conversation_id == "215468532190877"
    assert event.user_id == "ph_user_9d2f"
    assert event.email == "sam.ortiz@example.com"
    assert event.session_id is None


@pytest.mark.parametrize("author_type", [[], {"type": "user"}, 7, None])
async def test_an_author_type_that_is_not_a_string_names_no_email(
    platform: IntercomPlatform, author_type: object
) -> None:
    """Found by the fuzz test: a list as ``type`` once raised TypeError (a 500)."""
    envelope = fixture("conversation_user_replied")
    for part in envelope["data"]["item"]["conversation_parts"]["conversation_parts"]:
        part["author"]["type"] = author_type
    envelope["data"]["item"]["source"]["author"]["type"] = author_type
    event = await platform.parse({}, encode(envelope))
    assert event.event is LinkEvent.REPLY_EXISTING
    assert event.email is None


async def test_a_1x_payload_takes_identity_from_item_user(platform: IntercomPlatform) -> None:
    event = await platform.parse({}, raw_fixture("conversation_user_created_v1"))
    assert event.event is LinkEvent.NEW
    assert event.conversation_id == "14973205112"
    assert event.user_id == "ph_user_legacy_42"
    assert event.email == "lee.park@example.com"
    assert event.session_id is None


async def test_our_own_note_echoing_back_as_an_admin_topic_is_ignored(
    platform: IntercomPlatform,
) -> None:
    event = await platform.parse({}, raw_fixture("conversation_admin_noted"))
    assert event.event is None
    assert event.reason == "topic 'conversation.admin.noted' is not link-eligible"
    assert event.delivery_id == "notif_7e8f9a0b-1c2d-4e3f-8a4b-5c6d7e8f9a0b"
    assert event.conversation_id is None


@pytest.mark.parametrize(
    "topic",
    ["conversation.admin.replied", "conversation.admin.closed", "contact.user.created", "x" * 500],
)
async def test_every_other_topic_is_ignored_even_without_an_item(
    platform: IntercomPlatform, topic: str
) -> None:
    body = encode({"type": "notification_event", "topic": topic, "id": "notif_1", "data": {}})
    event = await platform.parse({}, body)
    assert event.event is None
    assert len(event.reason) < 100


async def test_the_session_attribute_is_configurable(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    envelope = fixture("conversation_user_created")
    created_item(envelope)["custom_attributes"] = {
        "posthog_session_id": "not-this-one",
        "bridge_session": "sess-42",
    }
    product = intercom_product(session_attribute="bridge_session")
    event = await IntercomPlatform(product, client, clock).parse({}, encode(envelope))
    assert event.session_id == "sess-42"


@pytest.mark.parametrize("value", ["has spaces", "", "s" * 129, "a/b", 12345, None, ["sess-1"]])
async def test_an_unusable_session_attribute_is_ignored(
    platform: IntercomPlatform, value: Any
) -> None:
    envelope = fixture("conversation_user_created")
    created_item(envelope)["custom_attributes"]["posthog_session_id"] = value
    event = await platform.parse({}, encode(envelope))
    assert event.session_id is None
    assert event.event is LinkEvent.NEW
    assert event.user_id == "ph_user_7c1e"


async def test_a_contact_without_external_id_has_no_user_id(platform: IntercomPlatform) -> None:
    # Intercom's own contact id is not the PostHog distinct id, so it must not stand in for it.
    envelope = fixture("conversation_user_created")
    del created_item(envelope)["contacts"]["contacts"][0]["external_id"]
    event = await platform.parse({}, encode(envelope))
    assert event.user_id is None
    assert event.email == "dana.li@example.com"


async def test_2_0_contacts_as_a_plain_list_are_read(platform: IntercomPlatform) -> None:
    envelope = fixture("conversation_user_created")
    item = created_item(envelope)
    item["contacts"] = item["contacts"]["contacts"]
    event = await platform.parse({}, encode(envelope))
    assert event.user_id == "ph_user_7c1e"


async def test_the_contacts_email_is_the_last_resort(platform: IntercomPlatform) -> None:
    envelope = fixture("conversation_user_created")
    item = created_item(envelope)
    del item["source"]["author"]["email"]
    item["contacts"]["contacts"][0]["email"] = "contact@example.com"
    event = await platform.parse({}, encode(envelope))
    assert event.email == "contact@example.com"


async def test_an_integer_conversation_id_becomes_a_string(platform: IntercomPlatform) -> None:
    envelope = fixture("conversation_user_created")
    created_item(envelope)["id"] = 215468532190451
    event = await platform.parse({}, encode(envelope))
    assert event.conversation_id == "215468532190451"


async def test_a_retried_notification_keeps_its_notification_id(
    platform: IntercomPlatform,
) -> None:
    envelope = fixture("conversation_user_created")
    first = await platform.parse({}, encode(envelope))
    retried = await platform.parse({}, encode(envelope | {"delivery_attempts": 2}))
    assert first.delivery_id == retried.delivery_id == envelope["id"]


async def test_a_null_notification_id_dedupes_by_body_hash(platform: IntercomPlatform) -> None:
    envelope = fixture("conversation_user_created") | {"id": None}
    body = encode(envelope)
    first = await platform.parse({}, body)
    again = await platform.parse({}, body)
    other = await platform.parse({}, encode(envelope | {"delivery_attempts": 2}))
    assert first.delivery_id == "sha256:" + hashlib.sha256(body).hexdigest()
    assert again.delivery_id == first.delivery_id
    assert other.delivery_id != first.delivery_id


@pytest.mark.parametrize("notification_id", ["", 42, "n" * 257])
async def test_an_unusable_notification_id_falls_back_to_the_body_hash(
    platform: IntercomPlatform, notification_id: Any
) -> None:
    envelope = fixture("conversation_user_created") | {"id": notification_id}
    event = await platform.parse({}, encode(envelope))
    assert event.delivery_id == "sha256:" + hashlib.sha256(encode(envelope)).hexdigest()


def _without_item(envelope: dict[str, Any]) -> dict[str, Any]:
    envelope["data"] = {"type": "notification_event_data"}
    return envelope


def _with_item_id(value: Any) -> Any:
    def change(envelope: dict[str, Any]) -> dict[str, Any]:
        created_item(envelope)["id"] = value
        return envelope

    return change


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda e: e | {"topic": None}, "'topic' must be a string"),
        (lambda e: {k: v for k, v in e.items() if k != "topic"}, "'topic' must be a string"),
        (_without_item, "'data.item' must be an object"),
        (lambda e: e | {"data": "item"}, "'data.item' must be an object"),
        (_with_item_id(None), "'data.item.id'"),
        (_with_item_id(""), "'data.item.id'"),
        (_with_item_id(True), "'data.item.id'"),
        (_with_item_id("c" * 257), "'data.item.id'"),
    ],
)
async def test_a_link_eligible_notification_it_cannot_read_is_invalid(
    platform: IntercomPlatform, change: Any, problem: str
) -> None:
    body = encode(change(fixture("conversation_user_created")))
    with pytest.raises(InvalidWebhook, match=problem):
        await platform.parse({}, body)


@pytest.mark.parametrize(
    ("body", "problem"),
    [(b"{not json", "not valid JSON"), (b"\xff\xfe", "not valid JSON"), (b"[]", "JSON object")],
)
async def test_a_body_that_is_not_a_json_object_is_invalid(
    platform: IntercomPlatform, body: bytes, problem: str
) -> None:
    with pytest.raises(InvalidWebhook, match=problem):
        await platform.parse({}, body)


# --- post_note ---


async def test_post_note_sends_an_escaped_html_admin_note(
    platform: IntercomPlatform, intercom: respx.MockRouter
) -> None:
    route = intercom.post(REPLY_URL).respond(200, json=fixture("reply_note_response"))
    body = (
        "session_id: sess-1\ntimestamp: 2024-06-10 14:58:40 UTC\n\n"
        "[1] Typed <script>x</script> & saved"
    )
    await platform.post_note(make_note(body=body))
    request = route.calls.last.request
    assert request.method == "POST"
    assert str(request.url) == REPLY_URL
    assert request.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert request.headers["intercom-version"] == "2.14"
    assert request.headers["accept"] == "application/json"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "message_type": "note",
        "type": "admin",
        "admin_id": ADMIN_ID,
        "body": (
            "session_id: sess-1<br>timestamp: 2024-06-10 14:58:40 UTC<br><br>"
            "[1] Typed &lt;script&gt;x&lt;/script&gt; &amp; saved"
        ),
    }


async def test_post_note_sends_the_plain_body_when_configured_for_text(
    client: httpx.AsyncClient, clock: ManualClock, intercom: respx.MockRouter
) -> None:
    route = intercom.post(REPLY_URL).respond(200, json=fixture("reply_note_response"))
    product = intercom_product(intercom={"body_format": "text", "api_version": "2.11"})
    note = make_note(body="session_id: s\n\n[1] a <b> & c")
    await IntercomPlatform(product, client, clock).post_note(note)
    request = route.calls.last.request
    assert json.loads(request.content)["body"] == "session_id: s\n\n[1] a <b> & c"
    assert request.headers["intercom-version"] == "2.11"


async def test_post_note_returns_the_last_note_by_our_admin(
    platform: IntercomPlatform, intercom: respx.MockRouter
) -> None:
    # The response also holds our older note, other admins' notes and a later assignment by us.
    intercom.post(REPLY_URL).respond(200, json=fixture("reply_note_response"))
    assert await platform.post_note(make_note()) == "31894414001"


async def test_post_note_compares_admin_ids_as_strings(
    platform: IntercomPlatform, intercom: respx.MockRouter
) -> None:
    conversation = fixture("reply_note_response")
    parts = conversation["conversation_parts"]["conversation_parts"]
    parts.append(
        {
            "type": "conversation_part",
            "id": 9001,
            "part_type": "note",
            "author": {"type": "admin", "id": int(ADMIN_ID)},
        }
    )
    intercom.post(REPLY_URL).respond(200, json=conversation)
    assert await platform.post_note(make_note()) == "9001"


def _without_our_notes() -> dict[str, Any]:
    conversation = fixture("reply_note_response")
    parts = conversation["conversation_parts"]["conversation_parts"]
    conversation["conversation_parts"]["conversation_parts"] = [
        p for p in parts if not (p["part_type"] == "note" and p["author"]["id"] == ADMIN_ID)
    ]
    return conversation


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, json=_without_our_notes()),
        httpx.Response(200, json={"type": "conversation", "id": "215468532190451"}),
        httpx.Response(200, json={"conversation_parts": {"conversation_parts": "none"}}),
        httpx.Response(200, json=[]),
        httpx.Response(200, text="ok"),
        httpx.Response(204),
    ],
)
async def test_post_note_without_our_note_in_the_answer_returns_none(
    platform: IntercomPlatform, intercom: respx.MockRouter, response: httpx.Response
) -> None:
    intercom.post(REPLY_URL).mock(return_value=response)
    assert await platform.post_note(make_note()) is None


async def test_post_note_escapes_the_conversation_id_in_the_path(
    platform: IntercomPlatform, intercom: respx.MockRouter
) -> None:
    route = intercom.post().respond(200, json={})
    await platform.post_note(make_note(conversation_id="12/../admins?x=1 #"))
    assert (
        route.calls.last.request.url.raw_path
        == b"/conversations/12%2F..%2Fadmins%3Fx%3D1%20%23/reply"
    )


@pytest.mark.parametrize("conversation_id", ["", ".", ".."])
async def test_post_note_refuses_a_conversation_id_that_is_no_path_segment(
    platform: IntercomPlatform, intercom: respx.MockRouter, conversation_id: str
) -> None:
    route = intercom.route().respond(200)
    with pytest.raises(PermanentDeliveryError):
        await platform.post_note(make_note(conversation_id=conversation_id))
    assert not route.called


@pytest.mark.parametrize("api_base", ["https://api.eu.intercom.io", "https://api.eu.intercom.io/"])
async def test_post_note_goes_to_the_regional_api_base(
    client: httpx.AsyncClient, clock: ManualClock, intercom: respx.MockRouter, api_base: str
) -> None:
    route = intercom.post("https://api.eu.intercom.io/conversations/215468532190451/reply")
    route.respond(200, json={})
    platform = IntercomPlatform(intercom_product(intercom={"api_base": api_base}), client, clock)
    await platform.post_note(make_note())
    assert route.call_count == 1


# --- errors ---


async def test_a_rate_limit_waits_until_x_ratelimit_reset(
    platform: IntercomPlatform, intercom: respx.MockRouter, clock: ManualClock
) -> None:
    reset_at = int(clock.now()) + 7
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset_at)}
    intercom.post(REPLY_URL).respond(429, headers=headers)
    clock.advance(0.5)
    with pytest.raises(RetryableDeliveryError) as caught:
        await platform.post_note(make_note())
    assert caught.value.retry_after_s == pytest.approx(6.5)


@pytest.mark.parametrize(
    ("headers", "wait_s"),
    [
        ({"X-RateLimit-Reset": "1699999990"}, 0.0),  # already past (clock skew)
        ({"X-RateLimit-Reset": "1800000000"}, MAX_WAIT_HINT_S),
        ({"Retry-After": "5"}, 5.0),
        ({"X-RateLimit-Reset": "soon", "Retry-After": "3"}, 3.0),
        ({}, None),
    ],
)
async def test_a_rate_limit_hint_is_bounded_and_falls_back_to_retry_after(
    platform: IntercomPlatform,
    intercom: respx.MockRouter,
    headers: dict[str, str],
    wait_s: float | None,
) -> None:
    intercom.post(REPLY_URL).respond(429, headers=headers)
    with pytest.raises(RetryableDeliveryError) as caught:
        await platform.post_note(make_note())
    assert caught.value.retry_after_s == wait_s


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_retryable(
    platform: IntercomPlatform, intercom: respx.MockRouter, status: int
) -> None:
    intercom.post(REPLY_URL).respond(status)
    with pytest.raises(RetryableDeliveryError):
        await platform.post_note(make_note())


@pytest.mark.parametrize("failure", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")])
async def test_network_failures_are_retryable(
    platform: IntercomPlatform, intercom: respx.MockRouter, failure: Exception
) -> None:
    intercom.post(REPLY_URL).mock(side_effect=failure)
    with pytest.raises(RetryableDeliveryError) as caught:
        await platform.post_note(make_note())
    assert caught.value.__cause__ is failure


@pytest.mark.parametrize("status", [400, 401, 403, 422])
async def test_refusals_are_permanent(
    platform: IntercomPlatform, intercom: respx.MockRouter, status: int
) -> None:
    body = {"type": "error.list", "errors": [{"code": "unauthorized", "message": "no"}]}
    intercom.post(REPLY_URL).respond(status, json=body)
    with pytest.raises(PermanentDeliveryError) as caught:
        await platform.post_note(make_note())
    assert not isinstance(caught.value, ConversationNotFound)


async def test_a_missing_conversation_is_conversation_not_found(
    platform: IntercomPlatform, intercom: respx.MockRouter
) -> None:
    body = {"type": "error.list", "errors": [{"code": "not_found", "message": "Not Found"}]}
    intercom.post(REPLY_URL).respond(404, json=body)
    with pytest.raises(ConversationNotFound):
        await platform.post_note(make_note())


# --- redact_note ---


async def test_redact_posts_the_conversation_part_to_redact(
    platform: IntercomPlatform, intercom: respx.MockRouter
) -> None:
    route = intercom.post(REDACT_URL).respond(200, json={"type": "conversation"})
    await platform.redact_note("215468532190451", "31894414001")
    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert request.headers["intercom-version"] == "2.14"
    assert json.loads(request.content) == {
        "type": "conversation_part",
        "conversation_id": "215468532190451",
        "conversation_part_id": "31894414001",
    }


async def test_redact_failures_are_typed(
    platform: IntercomPlatform, intercom: respx.MockRouter, clock: ManualClock
) -> None:
    headers = {"X-RateLimit-Reset": str(int(clock.now()) + 2)}
    intercom.post(REDACT_URL).respond(429, headers=headers)
    with pytest.raises(RetryableDeliveryError) as caught:
        await platform.redact_note("215468532190451", "31894414001")
    assert caught.value.retry_after_s == 2


# --- registry ---


def test_build_platform_builds_the_intercom_adapter(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    assert isinstance(build_platform(intercom_product(), client, clock), IntercomPlatform)


def test_an_intercom_product_without_its_section_is_refused(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    product = ProductConfig.model_construct(id="acme", platform="intercom", settings=None)
    with pytest.raises(ValueError, match=r"\[intercom\]"):
        IntercomPlatform(product, client, clock)


# --- the webhook route, in-process over a real Redis ---


async def post_signed(h: Harness, body: bytes, *, secret: str = CLIENT_SECRET) -> httpx.Response:
    headers = {"content-type": "application/json", **signed(body, secret=secret)}
    return await h.client.post("/chatbot-webhook/acme", content=body, headers=headers)


@pytest.fixture
async def bridge(redis_client: aioredis.Redis, clock: ManualClock) -> AsyncIterator[Harness]:
    clock.t = T0
    async with running_app(
        products=[intercom_product()], clock=clock, redis_client=redis_client
    ) as harness:
        yield harness


async def test_a_signed_user_created_webhook_links_the_session(bridge: Harness) -> None:
    r = await post_signed(bridge, raw_fixture("conversation_user_created"))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "linked",
        "session_id": CREATED_SESSION,
        "conversation_id": "215468532190451",
    }


async def test_a_bad_signature_is_401_and_links_nothing(bridge: Harness) -> None:
    body = raw_fixture("conversation_user_created")
    r = await post_signed(bridge, body, secret="not-our-client-secret")
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_signature"
    assert await bridge.services.store.session_view("acme", CREATED_SESSION) is None
    # The rejected delivery did not use up its notification id either.
    r = await post_signed(bridge, body)
    assert r.json()["status"] == "linked"


async def test_an_unsigned_webhook_is_401(bridge: Harness) -> None:
    body = raw_fixture("conversation_user_created")
    r = await bridge.client.post(
        "/chatbot-webhook/acme", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 401


async def test_head_answers_intercoms_url_check(bridge: Harness) -> None:
    r = await bridge.client.head("/chatbot-webhook/acme")
    assert r.status_code == 200


async def test_a_redelivered_notification_is_a_duplicate(bridge: Harness) -> None:
    body = raw_fixture("conversation_user_created")
    assert (await post_signed(bridge, body)).json()["status"] == "linked"
    r = await post_signed(bridge, body)
    assert r.status_code == 200
    assert r.json()["status"] == "duplicate"


@pytest.mark.parametrize("name", ["conversation_admin_noted", "ping"])
async def test_admin_topics_and_pings_are_ignored(bridge: Harness, name: str) -> None:
    r = await post_signed(bridge, raw_fixture(name))
    assert r.status_code == 200
    assert r.json()["status"] == "ignored"


async def test_a_signed_unreadable_notification_is_400_not_410(bridge: Harness) -> None:
    r = await post_signed(
        bridge, encode({"type": "notification_event", "topic": "conversation.user.created"})
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_webhook"


def answer_with_our_note(part_id: str) -> httpx.Response:
    conversation = fixture("reply_note_response")
    part = {"type": "conversation_part", "id": part_id, "part_type": "note"}
    part["author"] = {"type": "admin", "id": ADMIN_ID}
    conversation["conversation_parts"]["conversation_parts"].append(part)
    return httpx.Response(200, json=conversation)


async def test_batch_webhook_note_then_summary_redacts_the_note_by_its_part_id(
    bridge: Harness, intercom: respx.MockRouter
) -> None:
    answers = [answer_with_our_note("31894415001"), answer_with_our_note("31894416001")]
    reply = intercom.post(REPLY_URL).mock(side_effect=answers)
    redact = intercom.post(REDACT_URL).respond(200, json={"type": "conversation"})
    r = await bridge.post_batch("acme", batch("s1", ("Typed <b>&", T0), user_id="ph_user_7c1e"))
    assert r.status_code == 202, r.text
    envelope = fixture("conversation_user_created")
    created_item(envelope)["custom_attributes"] = {}
    r = await post_signed(bridge, encode(envelope))
    assert r.json() == {
        "status": "linked",
        "session_id": "s1",
        "conversation_id": "215468532190451",
    }

    assert await bridge.deliver() == 1
    assert reply.call_count == 1
    assert json.loads(reply.calls.last.request.content)["body"] == (
        "session_id: s1<br>timestamp: 2024-06-10 14:58:40 UTC<br><br>[1] Typed &lt;b&gt;&amp;"
    )
    summary = {"type": "summary", "session_id": "s1", "summary": "The user exported."}
    assert (await bridge.post_batch("acme", summary)).status_code == 202
    await bridge.deliver()
    assert reply.call_count == 2
    assert json.loads(redact.calls.last.request.content) == {
        "type": "conversation_part",
        "conversation_id": "215468532190451",
        "conversation_part_id": "31894415001",
    }
