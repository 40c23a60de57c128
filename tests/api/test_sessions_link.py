"""``POST /sessions/link``: browser-side and custom linking."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import respx

from tests.conftest import INGEST_SECRET, INGEST_TOKEN, NOTES_URL, ManualClock, batch, make_product
from tests.harness import Harness, running_app

T0 = 1_705_322_090.0  # 2024-01-15 12:34:50 UTC
ADMIN = "admin-token-0123456789"
BETA_TOKEN = "beta-token-0123456789"


@pytest.fixture
async def h(redis_client: aioredis.Redis, clock: ManualClock) -> AsyncIterator[Harness]:
    products = [
        make_product("acme"),
        make_product("beta", ingest_token=BETA_TOKEN, ingest_secret="beta-secret-0123"),
    ]
    async with running_app(
        products=products, clock=clock, redis_client=redis_client, admin_token=ADMIN
    ) as harness:
        yield harness


def link_body(session_id: str = "s1", conversation_id: str = "c1", **extra: Any) -> dict[str, Any]:
    return {
        "product_id": "acme",
        "session_id": session_id,
        "conversation_id": conversation_id,
        **extra,
    }


async def link(
    h: Harness, body: dict[str, Any], token: str | None = INGEST_TOKEN
) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return await h.client.post("/sessions/link", json=body, headers=headers)


def answer(status: str, session_id: str = "s1", conversation_id: str = "c1") -> dict[str, Any]:
    return {"status": status, "session_id": session_id, "conversation_id": conversation_id}


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    return body


async def is_linked(h: Harness, session_id: str = "s1") -> bool:
    r = await h.post_batch("acme", batch(session_id, ("probe", T0 + 50)))
    assert r.status_code == 202, r.text
    linked: bool = r.json()["linked"]
    return linked


# -- auth ----------------------------------------------------------------------------------------


async def test_link_with_the_product_ingest_token(h: Harness) -> None:
    r = await link(h, link_body())
    assert r.status_code == 200, r.text
    assert r.json() == answer("linked")
    assert await is_linked(h) is True


async def test_link_with_the_admin_token(h: Harness) -> None:
    r = await link(h, link_body(), token=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json() == answer("linked")


async def test_link_with_the_product_connector_signature(h: Harness) -> None:
    raw = json.dumps(link_body()).encode()
    signature = "sha256=" + hmac.new(INGEST_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    headers = {"content-type": "application/json", "x-connector-signature": signature}
    r = await h.client.post("/sessions/link", content=raw, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == answer("linked")


async def test_link_with_another_products_token_is_401(h: Harness) -> None:
    error(await link(h, link_body(), token=BETA_TOKEN), 401, "unauthorized")
    assert await is_linked(h) is False


async def test_link_without_credentials_is_401(h: Harness) -> None:
    error(await link(h, link_body(), token=None), 401, "unauthorized")
    assert await is_linked(h) is False


async def test_admin_token_is_refused_when_none_is_configured(
    redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    async with running_app(products=[make_product()], clock=clock, redis_client=redis_client) as h:
        error(await link(h, link_body(), token=ADMIN), 401, "unauthorized")


async def test_link_for_an_unknown_product_is_404(h: Harness) -> None:
    r = await link(h, {**link_body(), "product_id": "nope"}, token=ADMIN)
    body = error(r, 404, "unknown_product")
    assert "nope" in body["detail"]


# -- validation ----------------------------------------------------------------------------------


async def test_extra_fields_are_rejected(h: Harness) -> None:
    body = error(await link(h, link_body(channel="web")), 422, "invalid_payload")
    assert [f["loc"] for f in body["fields"]] == ["channel"]


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"session_id": "bad id"}, "session_id"),
        ({"conversation_id": ""}, "conversation_id"),
        ({"event": "closed"}, "event"),
        ({"product_id": None}, "product_id"),
    ],
    ids=["session_id", "conversation_id", "event", "product_id"],
)
async def test_invalid_field_is_rejected_with_its_location(
    h: Harness, change: dict[str, Any], loc: str
) -> None:
    body = error(await link(h, {**link_body(), **change}), 422, "invalid_payload")
    assert [f["loc"] for f in body["fields"]] == [loc]


async def test_missing_conversation_is_rejected(h: Harness) -> None:
    body = link_body()
    del body["conversation_id"]
    result = error(await link(h, body), 422, "invalid_payload")
    assert [f["loc"] for f in result["fields"]] == ["conversation_id"]


async def test_non_json_link_body_is_415(h: Harness) -> None:
    headers = {"authorization": f"Bearer {INGEST_TOKEN}", "content-type": "text/plain"}
    r = await h.client.post("/sessions/link", content=json.dumps(link_body()), headers=headers)
    error(r, 415, "unsupported_media_type")


# -- link semantics ------------------------------------------------------------------------------


async def test_repeating_a_link_is_already_linked(h: Harness) -> None:
    assert (await link(h, link_body())).json()["status"] == "linked"
    r = await link(h, link_body(event="new"))
    assert r.status_code == 200
    assert r.json() == answer("already_linked")


async def test_omitted_event_is_new_and_moves_the_link(h: Harness) -> None:
    await link(h, link_body(conversation_id="c1"))
    # NEW overwrites; REPLY_EXISTING would have kept c1.
    r = await link(h, link_body(conversation_id="c2"))
    assert r.json() == answer("linked", conversation_id="c2")
    r = await link(h, link_body(conversation_id="c2", event="reply_existing"))
    assert r.json() == answer("already_linked", conversation_id="c2")


async def test_reply_existing_keeps_an_existing_link(h: Harness) -> None:
    await link(h, link_body(conversation_id="c1"))
    r = await link(h, link_body(conversation_id="c2", event="reply_existing"))
    assert r.json() == answer("already_linked", conversation_id="c1")


async def test_reply_existing_links_an_unlinked_session(h: Harness) -> None:
    r = await link(h, link_body(event="reply_existing"))
    assert r.json() == answer("linked")


async def test_explicit_new_moves_the_link(h: Harness) -> None:
    await link(h, link_body(conversation_id="c1"))
    r = await link(h, link_body(conversation_id="c2", event="new"))
    assert r.json() == answer("linked", conversation_id="c2")


async def test_link_flushes_the_buffered_actions_as_one_note(
    redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(NOTES_URL).mock(return_value=httpx.Response(200, json={"id": "n1"}))
        async with running_app(
            products=[make_product()], clock=clock, redis_client=redis_client
        ) as h:
            await h.post_batch("acme", batch("s1", ("A", T0), ("B", T0 + 0.5)))
            assert (await link(h, link_body())).json()["status"] == "linked"
            assert await h.deliver() == 1
            # Repeating the link posts nothing new, whether as a new request or a replay.
            assert (await link(h, link_body(event="new"))).json()["status"] == "already_linked"
            assert (await link(h, link_body())).json()["status"] == "duplicate"
            assert await h.deliver() == 0
    assert route.call_count == 1
    note = json.loads(route.calls.last.request.content)
    assert note["conversation_id"] == "c1"
    assert note["body"] == "session_id: s1\ntimestamp: 2024-01-15 12:34:50 UTC\n\n[1] A\n[2] B"
