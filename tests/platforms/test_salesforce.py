import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import redis.asyncio as aioredis
import respx
from starlette.datastructures import Headers

from app import plugins
from app.domain import LinkEvent, Note
from app.platforms import build_platform
from app.platforms.base import (
    ConversationNotFound,
    InvalidWebhook,
    PermanentDeliveryError,
    RetryableDeliveryError,
    WebhookRejected,
    body_digest_id,
)
from app.platforms.salesforce import (
    MAX_COMMENT_BYTES,
    REQUEST_LIMIT_PAUSE_S,
    SalesforceConfig,
    SalesforcePlatform,
    case_safe_id,
    split_comment,
)
from app.products import ProductConfig, masked_view
from tests.conftest import ManualClock, batch
from tests.conftest import make_product as make_bridge_product
from tests.fakes.salesforce import webhook_headers
from tests.harness import running_app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "salesforce"
NOW = 1_705_322_090.0  # 2024-01-15T12:34:50Z
INSTANCE = "https://globex.my.salesforce.com"
TOKEN_URL = f"{INSTANCE}/services/oauth2/token"
COMMENTS_URL = f"{INSTANCE}/services/data/v62.0/sobjects/CaseComment"
CLIENT_ID = "3MVG9rZjd7MXFdLhGqV2xKcE0oPn5sT8uWyBz1A4cD6fH9jKmN2pQ5rS8tV1wX4yZ7aB0cE3fG6hJ9kL2mN5pQ"
CLIENT_SECRET = "8E2C41F7A9B3D6E05F1A2B3C4D5E6F708192A3B4C5D6E7F8091A2B3C4D5E6F7A"
WEBHOOK_TOKEN = "flow-callout-token-7c2e91d4b8a3"
CASE_ID = "500Hs00001XyZaBIAV"
COMMENT_ID = "00aHs00000Q1rStIAJ"
SESSION_ID = "0190f3a2-7c41-7d2e-b1a4-9e5f2c8d6a31"
EXTERNAL_ID = "ph_distinct_8c2e71"
EMAIL = "dana.whitfield@example.com"


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


def fixture(name: str) -> Any:
    return json.loads(fixture_bytes(name))


def encode(data: Any) -> bytes:
    return json.dumps(data).encode()


def salesforce_section(**overrides: Any) -> dict[str, Any]:
    section = {"instance_url": INSTANCE, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    return {**section, "webhook_token": WEBHOOK_TOKEN, **overrides}


def make_product(**overrides: Any) -> ProductConfig:
    return ProductConfig.model_validate(
        {
            "id": "globex",
            "platform": "salesforce",
            "ingest_token": "ingest-token-0123456789abcdef",
            "salesforce": salesforce_section(**overrides),
        }
    )


def make_note(**overrides: Any) -> Note:
    fields: dict[str, Any] = {
        "product_id": "globex",
        "session_id": SESSION_ID,
        "conversation_id": CASE_ID,
        "kind": "postlink",
        "body": f"session_id: {SESSION_ID}\ntimestamp: 2024-01-15 12:34:50 UTC\n\n[1] Opened",
        "delivery_id": "note_abc",
        **overrides,
    }
    return Note(**fields)


FIRST_TOKEN = "00DHs000000ABCD!first"


def token_answer(access_token: str = FIRST_TOKEN, **fields: Any) -> httpx.Response:
    return httpx.Response(
        200, json={**fixture("token_response"), "access_token": access_token, **fields}
    )


def created(comment_id: str = COMMENT_ID) -> httpx.Response:
    return httpx.Response(201, json={"id": comment_id, "success": True, "errors": []})


def error(status: int, name: str, **kwargs: Any) -> httpx.Response:
    return httpx.Response(status, content=fixture_bytes(name), **kwargs)


def sent_comment(route: respx.Route, index: int = -1) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(route.calls[index].request.content)
    return body


def bearer(route: respx.Route, index: int = -1) -> str:
    return route.calls[index].request.headers["authorization"]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http_client:
        yield http_client


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def platform(client: httpx.AsyncClient, clock: ManualClock) -> SalesforcePlatform:
    return SalesforcePlatform(make_product(), client, clock)


@pytest.fixture
def salesforce() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def tokens(salesforce: respx.MockRouter) -> respx.Route:
    """The token endpoint: a new access token on every call (``tok-1``, ``tok-2``, ...)."""
    issued = 0

    def issue(request: httpx.Request) -> httpx.Response:
        nonlocal issued
        issued += 1
        return token_answer(f"00DHs000000ABCD!tok-{issued}")

    return salesforce.post(TOKEN_URL).mock(side_effect=issue)


@pytest.fixture
def comments(salesforce: respx.MockRouter) -> respx.Route:
    """CaseComment create: ``00aHs0000000001...``, ``...2``, ... in order."""
    ids = iter(case_safe_id(f"00aHs{n:010d}") for n in range(1, 1000))
    return salesforce.post(COMMENTS_URL).mock(side_effect=lambda request: created(next(ids)))


# --- configuration ---


def test_the_section_defaults() -> None:
    config = make_product().settings
    assert isinstance(config, SalesforceConfig)
    assert config.api_version == "62.0"
    assert config.token_ttl_s == 3600
    assert config.token_endpoint == TOKEN_URL
    assert make_product().webhook_secret == WEBHOOK_TOKEN  # the inbound secret


def test_a_trailing_slash_and_a_token_url_are_taken_as_given() -> None:
    product = make_product(instance_url=INSTANCE + "/", token_url="https://login.example/token")
    assert isinstance(product.settings, SalesforceConfig)
    assert product.settings.instance_url == INSTANCE
    assert product.settings.token_endpoint == "https://login.example/token"


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"instance_url": "http://globex.my.salesforce.com"}, "https://"),
        ({"instance_url": "globex.my.salesforce.com"}, "https://"),
        ({"token_url": "ftp://login.salesforce.com"}, "https://"),
        ({"api_version": "62"}, "62.0"),
        ({"api_version": "v62.0"}, "62.0"),
        ({"webhook_token": "short"}, "too short"),
        ({"client_secret": " " * 20}, "must not be empty"),
        ({"client_id": "  "}, "must not be empty"),
        ({"token_ttl_s": 0}, "greater than or equal to 60"),
        ({"webhook_secret": WEBHOOK_TOKEN}, "Extra inputs"),
    ],
)
def test_invalid_sections_are_refused(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        make_product(**overrides)


def test_http_is_allowed_on_loopback_only() -> None:
    product = make_product(instance_url="http://127.0.0.1:8931")
    assert isinstance(product.settings, SalesforceConfig)
    assert product.settings.token_endpoint == "http://127.0.0.1:8931/services/oauth2/token"


def test_secrets_are_masked() -> None:
    view = masked_view(make_product())["salesforce"]
    assert view["client_secret"] == "****" + CLIENT_SECRET[-4:]
    assert view["webhook_token"] == "****" + WEBHOOK_TOKEN[-4:]
    assert view["client_id"] == CLIENT_ID


def test_the_default_note_budget_is_100_a_minute() -> None:
    budget = make_product().note_budget
    assert budget is not None
    assert budget.per_minute == 100


def test_the_plugin_is_registered(client: httpx.AsyncClient, clock: ManualClock) -> None:
    assert plugins.platform_class("salesforce") is SalesforcePlatform
    assert isinstance(build_platform(make_product(), client, clock), SalesforcePlatform)


def test_the_adapter_needs_a_salesforce_section(
    client: httpx.AsyncClient, clock: ManualClock
) -> None:
    product = ProductConfig.model_construct(id="globex", platform="salesforce", settings=None)
    with pytest.raises(ValueError, match=r"\[salesforce\]"):
        SalesforcePlatform(product, client, clock)


# --- verify ---


def test_verify_accepts_the_named_credential_header(platform: SalesforcePlatform) -> None:
    body = fixture_bytes("webhook_case_created")
    platform.verify(webhook_headers(WEBHOOK_TOKEN), body)
    platform.verify(Headers(headers={"X-Bridge-Token": WEBHOOK_TOKEN}), body)


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({}, "required"),
        ({"x-bridge-token": ""}, "required"),
        ({"x-bridge-token": "not-the-webhook-token"}, "does not match"),
        ({"x-bridge-token": WEBHOOK_TOKEN[:-1]}, "does not match"),
        ({"x-bridge-token": WEBHOOK_TOKEN + "x"}, "does not match"),
        ({"x-bridge-token": "x" * 5000}, "too long"),
        ({"authorization": f"Bearer {WEBHOOK_TOKEN}"}, "required"),
    ],
)
def test_verify_rejects_a_missing_or_wrong_token(
    platform: SalesforcePlatform, headers: dict[str, str], problem: str
) -> None:
    with pytest.raises(WebhookRejected, match=problem):
        platform.verify(headers, fixture_bytes("webhook_case_created"))


# --- parse ---


async def test_case_created_is_a_new_link(platform: SalesforcePlatform) -> None:
    event = await platform.parse({}, fixture_bytes("webhook_case_created"))
    assert event.event is LinkEvent.NEW
    assert event.conversation_id == CASE_ID
    assert (event.session_id, event.user_id, event.email) == (SESSION_ID, EXTERNAL_ID, EMAIL)
    assert event.delivery_id == f"case.created:{CASE_ID}"


async def test_comment_added_is_a_reply_to_the_case(platform: SalesforcePlatform) -> None:
    event = await platform.parse({}, fixture_bytes("webhook_comment_added"))
    assert event.event is LinkEvent.REPLY_EXISTING
    assert event.conversation_id == CASE_ID
    assert (event.session_id, event.user_id, event.email) == (None, EXTERNAL_ID, EMAIL)
    assert event.delivery_id == "case.comment_added:00aHs00000Q2AbCIAV"


@pytest.mark.parametrize("name", ["case.closed", "case.updated", "Case.Created", ""])
async def test_other_events_are_ignored(platform: SalesforcePlatform, name: str) -> None:
    body = encode({"event": name, "case_id": "not even a case id", "id": "evt-1"})
    event = await platform.parse({}, body)
    assert event.event is None
    assert event.reason == f"event {name!r} is not link-eligible"
    assert event.delivery_id == "evt-1"


async def test_a_15_character_case_id_becomes_its_18_character_form(
    platform: SalesforcePlatform,
) -> None:
    event = await platform.parse({}, encode({"event": "case.created", "case_id": CASE_ID[:15]}))
    assert event.conversation_id == CASE_ID


def test_case_safe_id_matches_salesforce() -> None:
    # CASESAFEID() of these ids, as Salesforce computes it.
    assert case_safe_id("00558000001N0Ke") == "00558000001N0KeAAK"
    assert case_safe_id("500Hs00001XyZaB") == CASE_ID
    assert case_safe_id(CASE_ID) == CASE_ID


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"session_id": ""}, {"session_id": None}),
        ({"session_id": None}, {"session_id": None}),
        ({"session_id": "has spaces"}, {"session_id": None}),
        ({"session_id": "s" * 129}, {"session_id": None}),
        ({"session_id": "  sess-9  "}, {"session_id": "sess-9"}),
        ({"contact_external_id": "   "}, {"user_id": None}),
        ({"contact_external_id": 1234}, {"user_id": "1234"}),
        ({"contact_email": None}, {"email": None}),
        ({"contact_email": "x" * 513}, {"email": None}),
        ({"case_id": f"  {CASE_ID} "}, {"conversation_id": CASE_ID}),
        ({"unknown": "ignored"}, {"conversation_id": CASE_ID}),
    ],
)
async def test_field_values(
    platform: SalesforcePlatform, fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    data = {**fixture("webhook_case_created"), **fields}
    event = await platform.parse({}, encode(data))
    for name, value in expected.items():
        assert getattr(event, name) == value


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"event": NaN}', "not valid JSON"),
        (b"{}", "'event' must be a string"),
        (b'{"event": 7, "case_id": "x"}', "'event' must be a string"),
        (b'{"event": "case.created"}', "case_id"),
        (b'{"event": "case.created", "case_id": ""}', "case_id"),
        (b'{"event": "case.created", "case_id": "500Hs00001XyZa"}', "record id"),
        (b'{"event": "case.created", "case_id": "500Hs00001XyZaBI"}', "record id"),
        (b'{"event": "case.created", "case_id": "500Hs00001XyZaB/.."}', "record id"),
        (b'{"event": "case.created", "case_id": 500123456789012}', "case_id"),
        (b'{"event": "case.created", "case_id": "500Hs00001XyZaB", "contact_email": []}', "email"),
    ],
)
async def test_bodies_it_cannot_read_are_invalid(
    platform: SalesforcePlatform, body: bytes, problem: str
) -> None:
    with pytest.raises(InvalidWebhook, match=problem):
        await platform.parse({}, body)


async def test_a_body_without_an_id_is_deduplicated_by_its_digest(
    platform: SalesforcePlatform,
) -> None:
    data = {k: v for k, v in fixture("webhook_case_created").items() if k != "id"}
    body = encode(data)
    first = await platform.parse({}, body)
    assert first.delivery_id == body_digest_id(body)
    assert (await platform.parse({}, body)).delivery_id == first.delivery_id
    other = encode({**data, "contact_email": "someone.else@example.com"})
    assert (await platform.parse({}, other)).delivery_id != first.delivery_id
    too_long = encode({**data, "id": "i" * 257})
    assert (await platform.parse({}, too_long)).delivery_id == body_digest_id(too_long)


# --- the access token ---


async def test_the_first_note_fetches_a_client_credentials_token(
    platform: SalesforcePlatform, tokens: respx.Route, comments: respx.Route
) -> None:
    await platform.post_note(make_note())
    request = tokens.calls.last.request
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.content.decode()) == {
        "grant_type": ["client_credentials"],
        "client_id": [CLIENT_ID],
        "client_secret": [CLIENT_SECRET],
    }
    assert bearer(comments) == "Bearer 00DHs000000ABCD!tok-1"


async def test_api_calls_go_to_the_instance_the_token_names(
    platform: SalesforcePlatform, salesforce: respx.MockRouter
) -> None:
    other = "https://globex--eu2.my.salesforce.com"
    salesforce.post(TOKEN_URL).mock(return_value=token_answer(instance_url=other))
    route = salesforce.post(f"{other}/services/data/v62.0/sobjects/CaseComment").mock(
        return_value=created()
    )
    assert await platform.post_note(make_note()) == COMMENT_ID
    assert route.called


@pytest.mark.parametrize("instance_url", [None, "", "javascript:alert(1)", 42])
async def test_an_unusable_instance_url_falls_back_to_the_configured_one(
    platform: SalesforcePlatform, salesforce: respx.MockRouter, instance_url: Any
) -> None:
    salesforce.post(TOKEN_URL).mock(return_value=token_answer(instance_url=instance_url))
    route = salesforce.post(COMMENTS_URL).mock(return_value=created())
    await platform.post_note(make_note())
    assert route.called


async def test_a_configured_token_url_and_api_version_are_used(
    client: httpx.AsyncClient, clock: ManualClock, salesforce: respx.MockRouter
) -> None:
    token_url = "https://login.globex.example/services/oauth2/token"
    tokens = salesforce.post(token_url).mock(return_value=token_answer())
    route = salesforce.post(f"{INSTANCE}/services/data/v60.0/sobjects/CaseComment").mock(
        return_value=created()
    )
    product = make_product(token_url=token_url, api_version="60.0")
    await SalesforcePlatform(product, client, clock).post_note(make_note())
    assert (tokens.call_count, route.call_count) == (1, 1)


async def test_the_token_is_shared_by_every_note(
    platform: SalesforcePlatform, tokens: respx.Route, comments: respx.Route
) -> None:
    for n in range(3):
        await platform.post_note(make_note(delivery_id=f"note_{n}"))
    assert tokens.call_count == 1
    assert comments.call_count == 3
    assert {bearer(comments, n) for n in range(3)} == {"Bearer 00DHs000000ABCD!tok-1"}


async def test_concurrent_notes_wait_for_one_token_fetch(
    platform: SalesforcePlatform, salesforce: respx.MockRouter, comments: respx.Route
) -> None:
    async def slow_token(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return token_answer()

    tokens = salesforce.post(TOKEN_URL).mock(side_effect=slow_token)
    notes = [make_note(delivery_id=f"note_{n}") for n in range(10)]
    await asyncio.gather(*(platform.post_note(note) for note in notes))
    assert tokens.call_count == 1
    assert comments.call_count == 10


async def test_concurrent_notes_share_a_failed_token_fetch(
    platform: SalesforcePlatform, salesforce: respx.MockRouter, comments: respx.Route
) -> None:
    async def failing_token(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return httpx.Response(503)

    tokens = salesforce.post(TOKEN_URL).mock(side_effect=failing_token)
    notes = [make_note(delivery_id=f"note_{n}") for n in range(5)]
    results = await asyncio.gather(*(platform.post_note(n) for n in notes), return_exceptions=True)
    assert all(isinstance(result, RetryableDeliveryError) for result in results)
    assert tokens.call_count == 1
    assert not comments.called
    # A later note tries again.
    tokens.mock(return_value=token_answer())
    await platform.post_note(make_note())
    assert tokens.call_count == 2


async def test_the_token_is_fetched_again_after_token_ttl_s(
    platform: SalesforcePlatform, clock: ManualClock, tokens: respx.Route, comments: respx.Route
) -> None:
    await platform.post_note(make_note())
    clock.advance(3600 - 1)
    await platform.post_note(make_note())
    assert tokens.call_count == 1
    clock.advance(1)
    await platform.post_note(make_note())
    assert tokens.call_count == 2
    assert bearer(comments) == "Bearer 00DHs000000ABCD!tok-2"


async def test_token_ttl_s_is_configurable(
    client: httpx.AsyncClient, clock: ManualClock, tokens: respx.Route, comments: respx.Route
) -> None:
    platform = SalesforcePlatform(make_product(token_ttl_s=900), client, clock)
    await platform.post_note(make_note())
    clock.advance(900)
    await platform.post_note(make_note())
    assert tokens.call_count == 2


async def test_an_expired_session_is_refreshed_once_and_the_call_retried(
    platform: SalesforcePlatform, tokens: respx.Route, salesforce: respx.MockRouter
) -> None:
    route = salesforce.post(COMMENTS_URL).mock(
        side_effect=[error(401, "error_invalid_session"), created()]
    )
    assert await platform.post_note(make_note()) == COMMENT_ID
    assert tokens.call_count == 2
    assert route.call_count == 2
    assert bearer(route, 0) == "Bearer 00DHs000000ABCD!tok-1"
    assert bearer(route, 1) == "Bearer 00DHs000000ABCD!tok-2"
    assert sent_comment(route, 0) == sent_comment(route, 1)
    # The new token serves the next note.
    route.mock(return_value=created())
    await platform.post_note(make_note())
    assert tokens.call_count == 2


async def test_a_fresh_token_refused_again_is_permanent(
    platform: SalesforcePlatform, tokens: respx.Route, salesforce: respx.MockRouter
) -> None:
    route = salesforce.post(COMMENTS_URL).mock(return_value=error(401, "error_invalid_session"))
    with pytest.raises(PermanentDeliveryError, match="INVALID_SESSION_ID") as caught:
        await platform.post_note(make_note())
    assert not isinstance(caught.value, ConversationNotFound)
    assert (tokens.call_count, route.call_count) == (2, 2)
    # The refused token is forgotten: the next note starts with a new one.
    route.mock(return_value=created())
    await platform.post_note(make_note())
    assert tokens.call_count == 3


async def test_notes_in_flight_when_the_session_expires_refresh_it_once(
    platform: SalesforcePlatform, salesforce: respx.MockRouter
) -> None:
    issued = 0

    async def slow_token(request: httpx.Request) -> httpx.Response:
        nonlocal issued
        issued += 1
        await asyncio.sleep(0.02)
        return token_answer(f"00DHs000000ABCD!tok-{issued}")

    def create(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"].endswith("!tok-1"):
            return error(401, "error_invalid_session")  # tok-1 expires as the notes use it
        return created()

    tokens = salesforce.post(TOKEN_URL).mock(side_effect=slow_token)
    route = salesforce.post(COMMENTS_URL).mock(side_effect=create)
    notes = [make_note(delivery_id=f"note_{n}") for n in range(6)]
    await asyncio.gather(*(platform.post_note(note) for note in notes))
    assert tokens.call_count == 2  # tok-1 for all six, then tok-2 for all six
    assert route.call_count == 12
    assert {bearer(route, n) for n in range(12)} == {
        "Bearer 00DHs000000ABCD!tok-1",
        "Bearer 00DHs000000ABCD!tok-2",
    }


async def test_a_401_without_invalid_session_id_is_permanent_and_keeps_the_token(
    platform: SalesforcePlatform, tokens: respx.Route, salesforce: respx.MockRouter
) -> None:
    salesforce.post(COMMENTS_URL).mock(return_value=httpx.Response(401, text="Unauthorized"))
    with pytest.raises(PermanentDeliveryError, match="answered 401"):
        await platform.post_note(make_note())
    assert tokens.call_count == 1


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        (error(400, "token_invalid_client"), "invalid_client: invalid client credentials"),
        (error(400, "token_no_run_as_user"), "no client credentials user enabled"),
        (httpx.Response(401, json={"error": "invalid_client"}), "answered 401 invalid_client"),
        (httpx.Response(404, text="<html>not found</html>"), "answered 404"),
        (httpx.Response(200, json={"token_type": "Bearer"}), "without access_token"),
        (httpx.Response(200, text="<html>maintenance</html>"), "without access_token"),
    ],
)
async def test_a_refused_token_request_is_permanent(
    platform: SalesforcePlatform,
    salesforce: respx.MockRouter,
    comments: respx.Route,
    response: httpx.Response,
    problem: str,
) -> None:
    salesforce.post(TOKEN_URL).mock(return_value=response)
    with pytest.raises(PermanentDeliveryError, match=problem) as caught:
        await platform.post_note(make_note())
    assert not isinstance(caught.value, ConversationNotFound)
    assert not comments.called


@pytest.mark.parametrize(
    ("response", "retry_after_s"),
    [
        (httpx.Response(500), None),
        (httpx.Response(503), None),
        (httpx.Response(429, headers={"Retry-After": "30"}), 30.0),
        (httpx.ConnectError("connection refused"), None),
        (httpx.ReadTimeout("timed out"), None),
    ],
)
async def test_a_failing_token_endpoint_is_retryable(
    platform: SalesforcePlatform,
    salesforce: respx.MockRouter,
    comments: respx.Route,
    response: httpx.Response | Exception,
    retry_after_s: float | None,
) -> None:
    salesforce.post(TOKEN_URL).mock(side_effect=[response])
    with pytest.raises(RetryableDeliveryError) as caught:
        await platform.post_note(make_note())
    assert caught.value.retry_after_s == retry_after_s
    assert not comments.called


# --- post_note ---


async def test_post_note_adds_a_private_case_comment(
    platform: SalesforcePlatform, tokens: respx.Route, salesforce: respx.MockRouter
) -> None:
    route = salesforce.post(COMMENTS_URL).respond(
        201, content=fixture_bytes("create_comment_response")
    )
    note = make_note()
    assert await platform.post_note(note) == COMMENT_ID
    request = route.calls.last.request
    assert request.headers["accept"] == "application/json"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "ParentId": CASE_ID,
        "CommentBody": note.body,
        "IsPublished": False,
    }


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(201, json={"success": True, "errors": []}),
        httpx.Response(201, json={"id": "../../x", "success": True}),
        httpx.Response(201, json=[]),
        httpx.Response(204),
    ],
)
async def test_an_answer_without_a_comment_id_gives_no_note_id(
    platform: SalesforcePlatform,
    tokens: respx.Route,
    salesforce: respx.MockRouter,
    response: httpx.Response,
) -> None:
    salesforce.post(COMMENTS_URL).mock(return_value=response)
    assert await platform.post_note(make_note()) is None


def long_note(chars: int) -> str:
    """A note of about ``chars`` characters: the header, then 80-character action lines."""
    header = f"session_id: {SESSION_ID}\ntimestamp: 2024-01-15 12:34:50 UTC\n"
    lines = [header]
    n = 0
    while sum(len(line) + 1 for line in lines) < chars:
        n += 1
        lines.append(f"[{n}] User clicked ".ljust(80, "x"))
    return "\n".join(lines)


async def test_a_long_note_is_split_at_line_breaks_into_ordered_private_comments(
    platform: SalesforcePlatform, tokens: respx.Route, comments: respx.Route
) -> None:
    body = long_note(9000)
    assert len(body) >= 9000
    note_id = await platform.post_note(make_note(body=body))
    sent = [sent_comment(comments, n) for n in range(comments.call_count)]
    assert len(sent) == 3
    assert all(comment["IsPublished"] is False for comment in sent)
    assert all(comment["ParentId"] == CASE_ID for comment in sent)
    parts = [comment["CommentBody"] for comment in sent]
    assert all(len(part.encode()) <= MAX_COMMENT_BYTES for part in parts)
    assert "\n".join(parts) == body  # in order, cut only at line breaks
    assert parts[1].startswith("[") and parts[2].startswith("[")
    ids = [case_safe_id(f"00aHs{n:010d}") for n in (1, 2, 3)]
    assert note_id == ",".join(ids)
    assert tokens.call_count == 1


async def test_a_single_line_longer_than_a_comment_is_cut(
    platform: SalesforcePlatform, tokens: respx.Route, comments: respx.Route
) -> None:
    line = "".join(chr(ord("a") + n % 26) for n in range(5000))
    await platform.post_note(make_note(body=line))
    parts = [sent_comment(comments, n)["CommentBody"] for n in range(comments.call_count)]
    assert [len(part) for part in parts] == [4000, 1000]
    assert "".join(parts) == line


def test_split_comment_counts_utf8_bytes_and_never_cuts_a_character() -> None:
    line = "é" * 2500  # 5000 bytes
    parts = split_comment(line)
    assert [len(part.encode()) for part in parts] == [4000, 1000]
    assert "".join(parts) == line
    emoji = "a" + "🙂" * 1000  # 4001 bytes: the 4-byte character at byte 3998 stays whole
    assert [len(part) for part in split_comment(emoji)] == [1000, 1]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("short note", ["short note"]),
        ("", [""]),
        ("a" * 4000, ["a" * 4000]),
        ("a" * 3000 + "\n" + "b" * 1500, ["a" * 3000, "b" * 1500]),
        ("a" * 3000 + "\n\n" + "b" * 1500, ["a" * 3000, "b" * 1500]),  # no blank edges
        ("a" * 2000 + "\n" + "b" * 1999 + "\nc", ["a" * 2000 + "\n" + "b" * 1999, "c"]),
        ("x\n" + "a" * 8001, ["x", "a" * 4000, "a" * 4000, "a"]),
        ("a" * 4001 + "\nb", ["a" * 4000, "a\nb"]),
    ],
)
def test_split_comment(body: str, expected: list[str]) -> None:
    assert split_comment(body) == expected


async def test_a_failed_part_takes_back_the_parts_already_posted(
    platform: SalesforcePlatform, tokens: respx.Route, salesforce: respx.MockRouter
) -> None:
    first, second = case_safe_id("00aHs0000000001"), case_safe_id("00aHs0000000002")
    salesforce.post(COMMENTS_URL).mock(
        side_effect=[created(first), created(second), httpx.Response(503)]
    )
    deletes = salesforce.delete(url__startswith=COMMENTS_URL + "/").respond(204)
    with pytest.raises(RetryableDeliveryError):
        await platform.post_note(make_note(body=long_note(9000)))
    deleted = [call.request.url.path.rsplit("/", 1)[-1] for call in deletes.calls]
    assert deleted == [first, second]


async def test_a_part_that_cannot_be_taken_back_does_not_hide_the_error(
    platform: SalesforcePlatform, tokens: respx.Route, salesforce: respx.MockRouter
) -> None:
    salesforce.post(COMMENTS_URL).mock(side_effect=[created(), error(400, "error_required_field")])
    salesforce.delete(url__startswith=COMMENTS_URL + "/").respond(500)
    with pytest.raises(PermanentDeliveryError, match="REQUIRED_FIELD_MISSING"):
        await platform.post_note(make_note(body=long_note(5000)))


# --- errors ---


@pytest.mark.parametrize(
    ("response", "retry_after_s", "problem"),
    [
        (error(403, "error_request_limit"), REQUEST_LIMIT_PAUSE_S, "REQUEST_LIMIT_EXCEEDED"),
        (
            error(403, "error_request_limit", headers={"Retry-After": "120"}),
            120.0,
            "TotalRequests",
        ),
        (error(503, "error_server_unavailable"), None, "SERVER_UNAVAILABLE"),
        (httpx.Response(500, text="oops"), None, "answered 500"),
        (httpx.Response(502), None, "answered 502"),
        (httpx.Response(429, headers={"Retry-After": "42"}), 42.0, "answered 429"),
        (httpx.ConnectError("connection refused"), None, "ConnectError"),
        (httpx.ReadTimeout("timed out"), None, "ReadTimeout"),
    ],
)
async def test_post_note_retryable_errors(
    platform: SalesforcePlatform,
    tokens: respx.Route,
    salesforce: respx.MockRouter,
    response: httpx.Response | Exception,
    retry_after_s: float | None,
    problem: str,
) -> None:
    salesforce.post(COMMENTS_URL).mock(side_effect=[response])
    with pytest.raises(RetryableDeliveryError, match=problem) as caught:
        await platform.post_note(make_note())
    assert caught.value.retry_after_s == retry_after_s


@pytest.mark.parametrize(
    ("status", "name"), [(404, "error_not_found"), (400, "error_entity_deleted")]
)
async def test_post_note_a_deleted_case_is_conversation_not_found(
    platform: SalesforcePlatform,
    tokens: respx.Route,
    salesforce: respx.MockRouter,
    status: int,
    name: str,
) -> None:
    salesforce.post(COMMENTS_URL).mock(return_value=error(status, name))
    with pytest.raises(ConversationNotFound, match=fixture(name)[0]["errorCode"]):
        await platform.post_note(make_note())


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        (error(400, "error_required_field"), "400 REQUIRED_FIELD_MISSING: Required fields"),
        (error(400, "error_insufficient_access"), "INSUFFICIENT_ACCESS_ON_CROSS_REFERENCE"),
        (
            httpx.Response(403, json=[{"errorCode": "API_DISABLED_FOR_ORG", "message": "off"}]),
            "API_DISABLED_FOR_ORG",
        ),
        (httpx.Response(403, text="Forbidden"), "answered 403"),
        (httpx.Response(400, json={"unexpected": "shape"}), "answered 400"),
        (httpx.Response(422), "answered 422"),
    ],
)
async def test_post_note_other_client_errors_are_permanent(
    platform: SalesforcePlatform,
    tokens: respx.Route,
    salesforce: respx.MockRouter,
    response: httpx.Response,
    problem: str,
) -> None:
    salesforce.post(COMMENTS_URL).mock(return_value=response)
    with pytest.raises(PermanentDeliveryError, match=problem) as caught:
        await platform.post_note(make_note())
    assert not isinstance(caught.value, ConversationNotFound)


# --- redaction ---


async def test_redaction_deletes_every_comment_of_the_note(
    platform: SalesforcePlatform,
    tokens: respx.Route,
    comments: respx.Route,
    salesforce: respx.MockRouter,
) -> None:
    deletes = salesforce.delete(url__startswith=COMMENTS_URL + "/").respond(204)
    assert platform.redacts
    note_id = await platform.post_note(make_note(body=long_note(9000)))
    assert note_id is not None
    await platform.redact_note(CASE_ID, note_id)
    deleted = [call.request.url.path.rsplit("/", 1)[-1] for call in deletes.calls]
    assert deleted == note_id.split(",")
    assert len(deleted) == 3
    assert all(call.request.method == "DELETE" for call in deletes.calls)
    assert bearer(deletes) == "Bearer 00DHs000000ABCD!tok-1"


@pytest.mark.parametrize(
    ("status", "name"), [(404, "error_not_found"), (400, "error_entity_deleted")]
)
async def test_redacting_a_comment_already_gone_is_fine(
    platform: SalesforcePlatform,
    tokens: respx.Route,
    salesforce: respx.MockRouter,
    status: int,
    name: str,
) -> None:
    salesforce.delete(url__startswith=COMMENTS_URL + "/").mock(return_value=error(status, name))
    await platform.redact_note(CASE_ID, COMMENT_ID)


async def test_every_comment_is_tried_before_a_redaction_failure_is_raised(
    platform: SalesforcePlatform, tokens: respx.Route, salesforce: respx.MockRouter
) -> None:
    deletes = salesforce.delete(url__startswith=COMMENTS_URL + "/").mock(
        side_effect=[httpx.Response(500), httpx.Response(204), error(404, "error_not_found")]
    )
    with pytest.raises(RetryableDeliveryError, match="answered 500"):
        await platform.redact_note(
            CASE_ID, "00aHs0000000001AAA,00aHs0000000002AAA,00aHs0000000003AAA"
        )
    assert deletes.call_count == 3


async def test_redaction_refreshes_an_expired_session(
    platform: SalesforcePlatform, tokens: respx.Route, salesforce: respx.MockRouter
) -> None:
    deletes = salesforce.delete(url__startswith=COMMENTS_URL + "/").mock(
        side_effect=[error(401, "error_invalid_session"), httpx.Response(204)]
    )
    await platform.redact_note(CASE_ID, COMMENT_ID)
    assert (tokens.call_count, deletes.call_count) == (2, 2)
    assert str(deletes.calls.last.request.url) == f"{COMMENTS_URL}/{COMMENT_ID}"


# --- through the webhook route, over a real Redis ---


def bridge_product() -> ProductConfig:
    return make_bridge_product("globex", platform="salesforce", salesforce=salesforce_section())


async def test_route_links_a_case_and_posts_the_flush_comment(
    redis_client: aioredis.Redis, tokens: respx.Route, comments: respx.Route
) -> None:
    async with running_app(
        products=[bridge_product()], clock=ManualClock(NOW), redis_client=redis_client
    ) as bridge:
        r = await bridge.post_batch("globex", batch(SESSION_ID, ("Opened export", NOW)))
        assert r.status_code == 202, r.text
        body = fixture_bytes("webhook_case_created")
        r = await bridge.client.post(
            "/chatbot-webhook/globex", content=body, headers=webhook_headers(WEBHOOK_TOKEN)
        )
        assert r.status_code == 200, r.text
        assert r.json() == {
            "status": "linked",
            "session_id": SESSION_ID,
            "conversation_id": CASE_ID,
        }
        again = await bridge.client.post(
            "/chatbot-webhook/globex", content=body, headers=webhook_headers(WEBHOOK_TOKEN)
        )
        assert again.json()["status"] == "duplicate"
        assert await bridge.deliver() == 1
    assert sent_comment(comments) == {
        "ParentId": CASE_ID,
        "CommentBody": f"session_id: {SESSION_ID}\ntimestamp: 2024-01-15 12:34:50 UTC\n\n"
        "[1] Opened export",
        "IsPublished": False,
    }


async def test_route_rejects_a_wrong_token(
    redis_client: aioredis.Redis, salesforce: respx.MockRouter
) -> None:
    async with running_app(
        products=[bridge_product()], clock=ManualClock(NOW), redis_client=redis_client
    ) as bridge:
        body = fixture_bytes("webhook_case_created")
        r = await bridge.client.post(
            "/chatbot-webhook/globex", content=body, headers=webhook_headers("wrong-token-0123456")
        )
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_signature"
    assert not salesforce.calls
