"""``POST /actions/{product_id}``: validation, dedupe, auth, limits."""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import respx
from prometheus_client import REGISTRY
from pydantic import ValidationError

from app.main import create_app
from app.products import ProductConfig, ProductsFileError, parse_products
from app.settings import Settings
from tests.conftest import (
    INGEST_SECRET,
    INGEST_TOKEN,
    NOTES_URL,
    WEBHOOK_SECRET,
    ManualClock,
    batch,
    make_product,
)
from tests.harness import Harness, running_app

T0 = 1_705_322_090.0  # 2024-01-15 12:34:50 UTC
JSON = {"content-type": "application/json"}
BEARER = {"authorization": f"Bearer {INGEST_TOKEN}"}


@pytest.fixture
async def h(redis_client: aioredis.Redis, clock: ManualClock) -> AsyncIterator[Harness]:
    async with running_app(
        products=[make_product()], clock=clock, redis_client=redis_client
    ) as harness:
        yield harness


def action(description: str = "clicked A", timestamp: float = T0, **extra: Any) -> dict[str, Any]:
    return {"description": description, "timestamp_start": timestamp, **extra}


def sign(body: bytes, secret: str = INGEST_SECRET, algorithm: str = "sha256") -> str:
    return f"{algorithm}=" + hmac.new(secret.encode(), body, algorithm).hexdigest()


async def post_raw(
    h: Harness, body: bytes, *, product_id: str = "acme", headers: dict[str, str] | None = None
) -> httpx.Response:
    sent = {**JSON, **BEARER, **(headers or {})}
    return await h.client.post(f"/actions/{product_id}", content=body, headers=sent)


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert an error answer's status and code; returns the JSON body."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def accepted(accepted: int, duplicates: int = 0, linked: bool = False) -> dict[str, Any]:
    return {"status": "accepted", "accepted": accepted, "duplicates": duplicates, "linked": linked}


# -- shape and arrays --------------------------------------------------------------------------


async def test_single_payload_is_accepted_with_counts(h: Harness) -> None:
    r = await h.post_batch("acme", batch("s1", ("A", T0), ("B", T0 + 1)))
    assert r.status_code == 202, r.text
    assert r.json() == accepted(2)


async def test_array_of_payloads_stores_each_under_its_own_session(h: Harness) -> None:
    # The same action in two sessions is two actions: identity includes the session.
    body = [batch("s1", ("A", T0)), batch("s2", ("A", T0), ("B", T0 + 1))]
    r = await h.post_batch("acme", body)
    assert r.status_code == 202, r.text
    assert r.json() == accepted(3)


async def test_array_of_100_payloads_is_accepted(h: Harness) -> None:
    r = await h.post_batch("acme", [batch(f"s{i}", ("A", T0)) for i in range(100)])
    assert r.status_code == 202, r.text
    assert r.json() == accepted(100)


async def test_array_of_101_payloads_is_rejected(h: Harness) -> None:
    r = await h.post_batch("acme", [batch(f"s{i}", ("A", T0)) for i in range(101)])
    body = error(r, 422, "invalid_payload")
    assert [f["loc"] for f in body["fields"]] == ["body"]
    assert "100" in body["fields"][0]["message"]


async def test_empty_array_is_rejected(h: Harness) -> None:
    body = error(await h.post_batch("acme", []), 422, "invalid_payload")
    assert [f["loc"] for f in body["fields"]] == ["body"]


async def test_empty_actions_list_is_rejected(h: Harness) -> None:
    body = error(await h.post_batch("acme", batch("s1")), 422, "invalid_payload")
    assert [f["loc"] for f in body["fields"]] == ["actions"]


async def test_1000_actions_are_accepted_and_1001_rejected(h: Harness) -> None:
    many = [(f"a{i}", T0 + i) for i in range(1001)]
    r = await h.post_batch("acme", batch("s1", *many[:1000]))
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 1000
    body = error(await h.post_batch("acme", batch("s2", *many)), 422, "invalid_payload")
    assert [f["loc"] for f in body["fields"]] == ["actions"]
    assert "1000" in body["fields"][0]["message"]


# -- field validation and locations -------------------------------------------------------------


async def test_error_location_names_the_action_index_and_field(h: Harness) -> None:
    actions = [action(), action("b"), action("c"), {"description": "bad", "timestamp_start": -5}]
    r = await h.post_batch("acme", {"session_id": "s1", "actions": actions})
    body = error(r, 422, "invalid_payload")
    assert body["fields"] == [
        {
            "loc": "actions[3].timestamp_start",
            "message": "Input should be greater than or equal to 0",
        }
    ]


async def test_error_location_in_an_array_starts_with_the_payload_index(h: Harness) -> None:
    bad = {"session_id": "s2", "actions": [{"timestamp_start": T0}]}
    r = await h.post_batch("acme", [batch("s1", ("A", T0)), bad])
    body = error(r, 422, "invalid_payload")
    assert body["fields"] == [{"loc": "[1].actions[0].description", "message": "Field required"}]


async def test_description_of_4000_chars_is_accepted_and_4001_rejected(h: Harness) -> None:
    r = await h.post_batch("acme", batch("s1", ("x" * 4000, T0)))
    assert r.status_code == 202, r.text
    body = error(await h.post_batch("acme", batch("s1", ("y" * 4001, T0))), 422, "invalid_payload")
    assert [f["loc"] for f in body["fields"]] == ["actions[0].description"]


async def test_non_string_description_is_rejected(h: Harness) -> None:
    actions = [{"description": 42, "timestamp_start": T0}]
    r = await h.post_batch("acme", {"session_id": "s1", "actions": actions})
    body = error(r, 422, "invalid_payload")
    assert [f["loc"] for f in body["fields"]] == ["actions[0].description"]


@pytest.mark.parametrize(
    "timestamp_json",
    ["-1", "-0.5", '"1705322090"', "1e400", "-1e400", "NaN", "Infinity", "true", "false", "[1]"],
    ids=[
        "negative",
        "negative-fraction",
        "string",
        "inf",
        "neg-inf",
        "nan",
        "infinity",
        "true",
        "false",
        "list",
    ],
)
async def test_invalid_timestamp_start_is_rejected(h: Harness, timestamp_json: str) -> None:
    field = f', "timestamp_start": {timestamp_json}'
    raw = f'{{"session_id": "s1", "actions": [{{"description": "a"{field}}}]}}'.encode()
    body = error(await post_raw(h, raw), 422, "invalid_payload")
    assert [f["loc"] for f in body["fields"]] == ["actions[0].timestamp_start"]


async def test_zero_and_integer_timestamps_are_accepted(h: Harness) -> None:
    raw = b'{"session_id": "s1", "actions": [{"description": "a", "timestamp_start": 0},'
    raw += b' {"description": "b", "timestamp_start": 1705322090}]}'
    r = await post_raw(h, raw)
    assert r.status_code == 202, r.text
    assert r.json() == accepted(2)


@pytest.mark.parametrize(
    "session_id", ["has space", "a/b", "x" * 129, "caf\u00e9", "line\n"], ids=repr
)
async def test_session_id_outside_the_pattern_is_rejected(h: Harness, session_id: str) -> None:
    body = error(await h.post_batch("acme", batch(session_id, ("A", T0))), 422, "invalid_payload")
    assert [f["loc"] for f in body["fields"]] == ["session_id"]


async def test_session_id_of_128_allowed_chars_is_accepted(h: Harness) -> None:
    session_id = ("0189a-B._:" * 13)[:128]
    r = await h.post_batch("acme", batch(session_id, ("A", T0)))
    assert r.status_code == 202, r.text


async def test_invalid_session_id_on_an_action_is_rejected(h: Harness) -> None:
    r = await h.post_batch("acme", {"session_id": None, "actions": [action(session_id="a b")]})
    body = error(r, 422, "invalid_payload")
    assert "actions[0].session_id" in [f["loc"] for f in body["fields"]]


async def test_null_session_id_takes_the_session_the_actions_carry(h: Harness) -> None:
    actions = [action("A", T0, session_id="s9"), action("B", T0 + 1, session_id="s9")]
    r = await h.post_batch("acme", {"session_id": None, "actions": actions})
    assert r.status_code == 202, r.text
    assert r.json() == accepted(2)
    # Stored under s9: the same action posted for s9 explicitly is a duplicate.
    again = await h.post_batch("acme", batch("s9", ("A", T0)))
    assert again.json() == accepted(0, duplicates=1)


@pytest.mark.parametrize(
    "sessions",
    [("s1", "s2"), ("s1", None), (None, None)],
    ids=["differing", "one-missing", "all-missing"],
)
async def test_null_session_id_without_one_common_action_session_is_rejected(
    h: Harness, sessions: tuple[str | None, str | None]
) -> None:
    actions = [action("A", T0, session_id=sessions[0]), action("B", T0, session_id=sessions[1])]
    r = await h.post_batch("acme", {"session_id": None, "actions": actions})
    body = error(r, 422, "invalid_payload")
    assert any("session_id" in f["message"] for f in body["fields"])


async def test_action_session_id_differing_from_the_batch_is_rejected(h: Harness) -> None:
    r = await h.post_batch("acme", {"session_id": "s1", "actions": [action(session_id="s2")]})
    body = error(r, 422, "invalid_payload")
    assert any("session_id" in f["message"] for f in body["fields"])


async def test_product_id_in_the_body_must_match_the_path(h: Harness) -> None:
    r = await h.post_batch("acme", batch("s1", ("A", T0), product_id="acme"))
    assert r.status_code == 202, r.text
    r = await h.post_batch("acme", batch("s1", ("B", T0), product_id="globex"))
    body = error(r, 422, "invalid_payload")
    assert [f["loc"] for f in body["fields"]] == ["product_id"]


async def test_product_id_mismatch_in_an_array_names_the_payload(h: Harness) -> None:
    body = [batch("s1", ("A", T0)), batch("s2", ("A", T0), product_id="globex")]
    result = error(await h.post_batch("acme", body), 422, "invalid_payload")
    assert [f["loc"] for f in result["fields"]] == ["[1].product_id"]
    # Nothing of a rejected request is stored.
    r = await h.post_batch("acme", batch("s1", ("A", T0)))
    assert r.json() == accepted(1)


async def test_count_disagreeing_with_the_actions_is_not_an_error(h: Harness) -> None:
    r = await h.post_batch("acme", batch("s1", ("A", T0), ("B", T0 + 1), count=7))
    assert r.status_code == 202, r.text
    assert r.json() == accepted(2)


async def test_unknown_fields_are_ignored(h: Harness) -> None:
    body = {
        "session_id": "s1",
        "utm": {"source": "x"},
        "actions": [action(properties={"$browser": "Firefox"}, elements_chain="div")],
    }
    r = await h.post_batch("acme", body)
    assert r.status_code == 202, r.text
    assert r.json() == accepted(1)


async def test_millisecond_timestamps_are_stored_as_seconds(
    redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(NOTES_URL).mock(return_value=httpx.Response(200, json={"id": "n1"}))
        async with running_app(
            products=[make_product()], clock=clock, redis_client=redis_client
        ) as h:
            r = await h.post_batch("acme", batch("s1", ("A", T0 * 1000), ("B", (T0 + 4) * 1000)))
            assert r.status_code == 202, r.text
            link = {"product_id": "acme", "session_id": "s1", "conversation_id": "c1"}
            r = await h.client.post("/sessions/link", json=link, headers=BEARER)
            assert r.json()["status"] == "linked", r.text
            assert await h.deliver() == 1
    note = json.loads(route.calls.last.request.content)
    assert note["body"] == "session_id: s1\ntimestamp: 2024-01-15 12:34:50 UTC\n\n[1] A\n\n[2] B"
    assert [a["timestamp_start"] for a in note["actions"]] == [T0, T0 + 4]


async def test_summary_payload_is_accepted(h: Harness) -> None:
    r = await h.post_batch("acme", {"type": "summary", "session_id": "s1", "summary": "Did X."})
    assert r.status_code == 202, r.text
    assert r.json() == accepted(1)


async def test_summary_without_text_is_rejected(h: Harness) -> None:
    r = await h.post_batch("acme", {"type": "summary", "session_id": "s1", "summary": ""})
    body = error(r, 422, "invalid_payload")
    assert [f["loc"] for f in body["fields"]] == ["summary"]


async def test_unknown_payload_type_is_rejected(h: Harness) -> None:
    r = await h.post_batch("acme", batch("s1", ("A", T0), type="clicks"))
    body = error(r, 422, "invalid_payload")
    assert "summary" in body["fields"][0]["message"]


@pytest.mark.parametrize("raw", [b"not json", b'{"session_id": "s1", "actions": [', b""])
async def test_non_json_body_is_rejected_with_a_clear_message(h: Harness, raw: bytes) -> None:
    body = error(await post_raw(h, raw), 422, "invalid_payload")
    assert body["fields"][0]["loc"] == "body"
    assert "JSON" in body["fields"][0]["message"]


@pytest.mark.parametrize("raw", [b'"text"', b"42", b"null"])
async def test_json_that_is_not_an_object_or_array_is_rejected(h: Harness, raw: bytes) -> None:
    body = error(await post_raw(h, raw), 422, "invalid_payload")
    assert body["fields"]


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""]
)
async def test_body_that_is_not_declared_json_gets_415(h: Harness, content_type: str) -> None:
    raw = json.dumps(batch("s1", ("A", T0))).encode()
    r = await post_raw(h, raw, headers={"content-type": content_type})
    error(r, 415, "unsupported_media_type")


async def test_json_content_type_with_charset_is_accepted(h: Harness) -> None:
    raw = json.dumps(batch("s1", ("A", T0))).encode()
    r = await post_raw(h, raw, headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 202, r.text


async def test_body_over_the_limit_gets_413(
    redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    small = json.dumps(batch("s1", ("A", T0))).encode()
    large = json.dumps(batch("s1", ("A" * 400, T0))).encode()
    assert len(small) <= 300 < len(large)
    async with running_app(
        products=[make_product()], clock=clock, redis_client=redis_client, max_body_bytes=300
    ) as h:
        assert (await post_raw(h, small)).status_code == 202
        error(await post_raw(h, large), 413, "body_too_large")


async def test_streamed_body_over_the_limit_gets_413(
    redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 100

    async with running_app(
        products=[make_product()], clock=clock, redis_client=redis_client, max_body_bytes=300
    ) as h:
        # No content-length: the limit holds while reading.
        r = await h.client.post("/actions/acme", content=chunks(), headers={**JSON, **BEARER})
        error(r, 413, "body_too_large")


async def test_unknown_product_gets_404(h: Harness) -> None:
    body = error(await h.post_batch("nope", batch("s1", ("A", T0))), 404, "unknown_product")
    assert "nope" in body["detail"]


# -- dedupe --------------------------------------------------------------------------------------


async def test_same_batch_twice_counts_duplicates(h: Harness) -> None:
    body = batch("s1", ("A", T0), ("B", T0 + 1), ("C", T0 + 2))
    assert (await h.post_batch("acme", body)).json() == accepted(3)
    assert (await h.post_batch("acme", body)).json() == accepted(0, duplicates=3)


async def test_batch_with_one_new_and_one_repeated_action(h: Harness) -> None:
    await h.post_batch("acme", batch("s1", ("A", T0)))
    r = await h.post_batch("acme", batch("s1", ("A", T0), ("B", T0 + 1)))
    assert r.json() == accepted(1, duplicates=1)


async def test_duplicates_within_one_batch_are_counted(h: Harness) -> None:
    r = await h.post_batch("acme", batch("s1", ("A", T0), ("A", T0)))
    assert r.json() == accepted(1, duplicates=1)


async def test_millisecond_redelivery_of_a_seconds_action_is_a_duplicate(h: Harness) -> None:
    await h.post_batch("acme", batch("s1", ("A", T0)))
    r = await h.post_batch("acme", batch("s1", ("A", T0 * 1000)))
    assert r.json() == accepted(0, duplicates=1)


BASE_ACTION = action("clicked A", T0, type="click", title="Home", index=0, canonical_url="/a")


@pytest.mark.parametrize(
    "change",
    [{"title": "Other"}, {"index": 5}, {"raw_url": "https://x.test/a?q=1"}, {"timestamp_end": T0}],
    ids=["title", "index", "raw_url", "timestamp_end"],
)
async def test_changing_a_field_outside_the_identity_is_still_a_duplicate(
    h: Harness, change: dict[str, Any]
) -> None:
    await h.post_batch("acme", {"session_id": "s1", "actions": [BASE_ACTION]})
    r = await h.post_batch("acme", {"session_id": "s1", "actions": [{**BASE_ACTION, **change}]})
    assert r.json() == accepted(0, duplicates=1)


@pytest.mark.parametrize(
    "change",
    [
        {"canonical_url": "/b"},
        {"canonical_url": None},
        {"type": "submit"},
        {"description": "clicked B"},
        {"timestamp_start": T0 + 0.001},
    ],
    ids=["canonical_url", "canonical_url-removed", "type", "description", "timestamp_start"],
)
async def test_changing_an_identity_field_makes_a_new_action(
    h: Harness, change: dict[str, Any]
) -> None:
    await h.post_batch("acme", {"session_id": "s1", "actions": [BASE_ACTION]})
    r = await h.post_batch("acme", {"session_id": "s1", "actions": [{**BASE_ACTION, **change}]})
    assert r.json() == accepted(1)


# -- auth ----------------------------------------------------------------------------------------


async def test_no_credentials_gets_401(h: Harness) -> None:
    error(await h.post_batch("acme", batch("s1", ("A", T0)), token=None), 401, "unauthorized")


@pytest.mark.parametrize(
    "authorization",
    ["Bearer wrong", f"Bearer {INGEST_TOKEN}x", f"Basic {INGEST_TOKEN}", INGEST_TOKEN, "Bearer "],
)
async def test_wrong_bearer_token_gets_401(h: Harness, authorization: str) -> None:
    raw = json.dumps(batch("s1", ("A", T0))).encode()
    r = await post_raw(h, raw, headers={"authorization": authorization})
    error(r, 401, "unauthorized")


async def test_valid_connector_signature_is_accepted_without_a_token(h: Harness) -> None:
    raw = json.dumps(batch("s1", ("A", T0))).encode()
    headers = {**JSON, "x-connector-signature": sign(raw)}
    r = await h.client.post("/actions/acme", content=raw, headers=headers)
    assert r.status_code == 202, r.text
    assert r.json() == accepted(1)


async def test_tampered_body_with_the_old_signature_gets_401(h: Harness) -> None:
    raw = json.dumps(batch("s1", ("A", T0))).encode()
    tampered = raw.replace(b'"A"', b'"B"')
    headers = {**JSON, "x-connector-signature": sign(raw)}
    r = await h.client.post("/actions/acme", content=tampered, headers=headers)
    error(r, 401, "unauthorized")


@pytest.mark.parametrize(
    "signature",
    [
        lambda raw: sign(raw, algorithm="sha1"),
        lambda raw: "sha1=" + sign(raw).removeprefix("sha256="),
        lambda raw: sign(raw).removeprefix("sha256="),
        lambda raw: sign(raw, secret="other-secret"),
        lambda raw: "sha256=",
    ],
    ids=["sha1-hmac", "sha1-prefix", "no-prefix", "wrong-secret", "empty-hex"],
)
async def test_wrong_signature_scheme_or_secret_gets_401(
    h: Harness, signature: Callable[[bytes], str]
) -> None:
    raw = json.dumps(batch("s1", ("A", T0))).encode()
    headers = {**JSON, "x-connector-signature": signature(raw)}
    r = await h.client.post("/actions/acme", content=raw, headers=headers)
    error(r, 401, "unauthorized")


async def test_credentials_of_one_product_do_not_work_for_another(
    redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    acme = make_product("acme")
    beta = make_product(
        "beta", ingest_token="beta-token-0123456789", ingest_secret="beta-secret-0123456789abcdef"
    )
    async with running_app(products=[acme, beta], clock=clock, redis_client=redis_client) as h:
        body = batch("s1", ("A", T0))
        error(await h.post_batch("beta", body, token=INGEST_TOKEN), 401, "unauthorized")
        raw = json.dumps(body).encode()
        r = await h.client.post(
            "/actions/beta", content=raw, headers={**JSON, "x-connector-signature": sign(raw)}
        )
        error(r, 401, "unauthorized")
        r = await h.post_batch("beta", body, token="beta-token-0123456789")
        assert r.status_code == 202, r.text


async def test_product_with_only_an_ingest_secret_rejects_bearer_tokens(
    redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    product = make_product(ingest_token=None)
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        body = batch("s1", ("A", T0))
        for token in (INGEST_TOKEN, INGEST_SECRET, "anything"):
            error(await h.post_batch("acme", body, token=token), 401, "unauthorized")
        raw = json.dumps(body).encode()
        r = await h.client.post(
            "/actions/acme", content=raw, headers={**JSON, "x-connector-signature": sign(raw)}
        )
        assert r.status_code == 202, r.text


async def test_product_with_only_a_token_rejects_signatures(
    redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    product = make_product(ingest_secret=None)
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        raw = json.dumps(batch("s1", ("A", T0))).encode()
        r = await h.client.post(
            "/actions/acme", content=raw, headers={**JSON, "x-connector-signature": sign(raw)}
        )
        error(r, 401, "unauthorized")


async def test_unauthenticated_console_product_accepts_batches_without_credentials(
    redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    demo = make_product(
        "demo",
        platform="console",
        allow_unauthenticated=True,
        ingest_token=None,
        ingest_secret=None,
    )
    async with running_app(products=[demo], clock=clock, redis_client=redis_client) as h:
        r = await h.post_batch("demo", batch("s1", ("A", T0)), token=None)
        assert r.status_code == 202, r.text
        assert r.json() == accepted(1)


# -- configuration: an empty secret is a start-up error ----------------------------------------


@pytest.mark.parametrize("key", ["ingest_token", "ingest_secret"])
@pytest.mark.parametrize("value", ["", "   "], ids=["empty", "blank"])
def test_empty_ingest_credential_is_a_config_error(key: str, value: str) -> None:
    with pytest.raises(ValidationError, match=key):
        make_product(**{key: value})


HTTP_SECTION = {
    "url": NOTES_URL,
    "signing_secret": WEBHOOK_SECRET,
    "webhook_secret": WEBHOOK_SECRET,
}


@pytest.mark.parametrize(
    ("platform", "section", "key"),
    [
        ("http", {**HTTP_SECTION, "webhook_secret": ""}, "http.webhook_secret"),
        ("http", {**HTTP_SECTION, "signing_secret": ""}, "http.signing_secret"),
        ("console", {"webhook_secret": ""}, "console.webhook_secret"),
        (
            "intercom",
            {"access_token": "tok-0123456789abcdef", "admin_id": "1", "client_secret": ""},
            "intercom.client_secret",
        ),
        (
            "zendesk",
            {
                "subdomain": "g",
                "email": "a@b.c",
                "api_token": "t-0123456789abcdef",
                "webhook_secret": "",
            },
            "zendesk.webhook_secret",
        ),
    ],
    ids=["http-webhook", "http-signing", "console", "intercom", "zendesk"],
)
def test_empty_webhook_secret_is_a_config_error(
    platform: str, section: dict[str, str], key: str
) -> None:
    table = {"platform": platform, "ingest_token": INGEST_TOKEN, platform: section}
    with pytest.raises(ProductsFileError, match=f"products.acme.{key}"):
        parse_products({"products": {"acme": table}}, env={})


def test_missing_webhook_secret_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="webhook secret"):
        ProductConfig.model_validate(
            {"id": "acme", "platform": "console", "ingest_token": INGEST_TOKEN}
        )


async def test_app_refuses_to_start_with_an_empty_ingest_token(
    tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    products_file = tmp_path / "products.toml"
    products_file.write_text(
        '[products.acme]\nplatform = "console"\ningest_token = ""\n'
        f'[products.acme.console]\nwebhook_secret = "{WEBHOOK_SECRET}"\n',
        encoding="utf-8",
    )
    app = create_app(
        settings=Settings(products_file=products_file),
        redis_client=redis_client,
        run_worker=False,
        configure_logs=False,
    )
    with pytest.raises(ProductsFileError, match="ingest_token"):
        async with app.router.lifespan_context(app):
            pass


async def test_app_starts_with_a_valid_products_file(
    tmp_path: Path, redis_client: aioredis.Redis
) -> None:
    products_file = tmp_path / "products.toml"
    products_file.write_text(
        f'[products.acme]\nplatform = "console"\ningest_token = "{INGEST_TOKEN}"\n'
        f'[products.acme.console]\nwebhook_secret = "{WEBHOOK_SECRET}"\n',
        encoding="utf-8",
    )
    app = create_app(
        settings=Settings(products_file=products_file),
        redis_client=redis_client,
        run_worker=False,
        configure_logs=False,
    )
    async with app.router.lifespan_context(app):
        assert sorted(app.state.services.products) == ["acme"]


# -- regressions ---------------------------------------------------------------------------------


async def test_product_id_mismatch_in_a_one_element_array_is_located_in_the_array(
    h: Harness,
) -> None:
    r = await h.post_batch("acme", [batch("s1", ("A", T0), product_id="globex")])
    body = error(r, 422, "invalid_payload")
    assert [f["loc"] for f in body["fields"]] == ["[0].product_id"]


@pytest.mark.parametrize("timestamp", [1e16, 253_402_300_800_000])
async def test_a_timestamp_past_the_year_9999_is_rejected(h: Harness, timestamp: float) -> None:
    """Such a time cannot be formatted in a note header: accepting it would poison the note."""
    r = await h.post_batch("acme", batch("s1", ("A", timestamp)))
    body = error(r, 422, "invalid_payload")
    assert [f["loc"] for f in body["fields"]] == ["actions[0].timestamp_start"]


async def test_the_last_second_of_9999_is_accepted(h: Harness) -> None:
    r = await h.post_batch("acme", batch("s1", ("A", 253_402_300_799_000)))
    assert r.status_code == 202, r.text


# -- strict numbers and lenient text --------------------------------------------------------------


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400", "false", '"1"'])
async def test_forwarded_at_must_be_a_finite_number(h: Harness, value: str) -> None:
    raw = f'{{"session_id": "s1", "forwarded_at": {value}, "actions": [{{"description": "a", '
    raw += f'"timestamp_start": {T0}}}]}}'
    body = error(await post_raw(h, raw.encode()), 422, "invalid_payload")
    assert [f["loc"] for f in body["fields"]] == ["forwarded_at"]


@pytest.mark.parametrize(
    ("loc", "payload"),
    [
        ("count", {"session_id": "s1", "count": True, "actions": [action()]}),
        ("actions[0].index", {"session_id": "s1", "actions": [action(index=False)]}),
    ],
)
async def test_booleans_are_not_numbers(h: Harness, loc: str, payload: dict[str, Any]) -> None:
    body = error(await h.post_batch("acme", payload), 422, "invalid_payload")
    assert [f["loc"] for f in body["fields"]] == [loc]


@pytest.mark.parametrize("replaces", ["true", "-1", "1.5", '["n1"]', '"n1"'])
async def test_summary_replaces_is_a_non_negative_integer(h: Harness, replaces: str) -> None:
    raw = f'{{"type": "summary", "session_id": "s1", "summary": "x", "replaces": {replaces}}}'
    body = error(await post_raw(h, raw.encode()), 422, "invalid_payload")
    assert [f["loc"] for f in body["fields"]] == ["replaces"]


async def test_an_overlong_identity_hint_is_ignored_not_rejected(h: Harness) -> None:
    before = REGISTRY.get_sample_value("bridge_fields_truncated_total", {"field": "email"}) or 0
    long_email = "x" * 600 + "@example.com"
    r = await h.post_batch("acme", batch("s1", ("A", T0), email=long_email, user_id="u1"))
    assert r.status_code == 202, r.text
    after = REGISTRY.get_sample_value("bridge_fields_truncated_total", {"field": "email"})
    assert after == before + 1
    state = await h.client.get("/sessions/acme/s1", headers=BEARER)
    assert state.json()["metadata"] == {"user_id": "u1", "email": None}


async def test_a_summary_without_type_but_with_actions_is_an_actions_batch(h: Harness) -> None:
    """Only a body with ``summary`` and no ``actions`` is taken for a summary."""
    r = await h.post_batch("acme", {**batch("s1", ("A", T0)), "summary": "ignored"})
    assert r.json() == accepted(1)
