"""Replay protection: the same raw body under the same credentials changes nothing a second
time (summaries, links, proactive triggers, batches); Standard Webhooks ids on ingest; reads need
a bearer token, never a body signature."""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import respx

from app.security import decode_whsec, standard_webhook_headers
from tests.conftest import (
    INGEST_SECRET,
    INGEST_TOKEN,
    NOTES_URL,
    REDACT_URL,
    ManualClock,
    batch,
    make_product,
)
from tests.harness import Harness, running_app

T0 = 1_705_322_090.0
ADMIN = "admin-token-0123456789"
INGEST_WHSEC = "whsec_" + base64.b64encode(b"i" * 32).decode()
BEARER = {"authorization": f"Bearer {INGEST_TOKEN}", "content-type": "application/json"}


@pytest.fixture
def notes() -> Iterator[respx.Route]:
    with respx.mock(assert_all_called=False) as mock:
        mock.post(REDACT_URL).mock(return_value=httpx.Response(204))
        yield mock.post(NOTES_URL).mock(return_value=httpx.Response(200, json={"id": "n"}))


@pytest.fixture
async def h(
    redis_client: aioredis.Redis, clock: ManualClock, notes: respx.Route
) -> AsyncIterator[Harness]:
    product = make_product(ingest_webhook_secret=INGEST_WHSEC)
    async with running_app(
        products=[product], clock=clock, redis_client=redis_client, admin_token=ADMIN
    ) as harness:
        yield harness


def raw(body: Any) -> bytes:
    return json.dumps(body).encode()


def connector_signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(INGEST_SECRET.encode(), body, "sha256").hexdigest()
    return {"x-connector-signature": f"sha256={digest}", "content-type": "application/json"}


def webhook_signed(body: bytes, *, now: float, msg_id: str) -> dict[str, str]:
    key = decode_whsec(INGEST_WHSEC)
    headers = standard_webhook_headers(key, msg_id=msg_id, timestamp=int(now), body=body)
    return {**headers, "content-type": "application/json"}


async def ingest(h: Harness, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return await h.client.post("/actions/acme", content=body, headers=headers)


async def link_request(h: Harness, conversation_id: str) -> httpx.Response:
    body = raw({"product_id": "acme", "session_id": "s1", "conversation_id": conversation_id})
    return await h.client.post("/sessions/link", content=body, headers=BEARER)


async def conversation_of(h: Harness, session_id: str = "s1") -> str | None:
    r = await h.client.get(f"/sessions/acme/{session_id}", headers=BEARER)
    value: str | None = r.json()["conversation_id"]
    return value


def kinds(notes: respx.Route) -> list[str]:
    return [json.loads(call.request.content)["kind"] for call in notes.calls]


# --- summaries ---


async def test_a_signed_summary_sent_three_times_posts_one_note(
    h: Harness, notes: respx.Route
) -> None:
    await link_request(h, "c1")
    summary = raw(
        {"type": "summary", "session_id": "s1", "summary": "Tried to export.", "replaces": 3}
    )
    answers = [(await ingest(h, summary, connector_signed(summary))).json() for _ in range(3)]
    await h.deliver()

    assert answers[0] == {"status": "accepted", "accepted": 1, "duplicates": 0, "linked": True}
    assert (
        answers[1]
        == answers[2]
        == {
            "status": "accepted",
            "accepted": 0,
            "duplicates": 1,
            "linked": True,
        }
    )
    assert kinds(notes) == ["summary"]


async def test_the_same_summary_under_the_bearer_token_is_also_replay_protected(
    h: Harness, notes: respx.Route
) -> None:
    await link_request(h, "c1")
    summary = raw({"type": "summary", "session_id": "s1", "summary": "Once."})
    for _ in range(2):
        await ingest(h, summary, BEARER)
        await h.deliver()
    assert kinds(notes) == ["summary"]


async def test_a_new_summary_text_is_a_new_request(h: Harness, notes: respx.Route) -> None:
    await link_request(h, "c1")
    for text in ("First.", "Second."):
        summary = raw({"type": "summary", "session_id": "s1", "summary": text})
        await ingest(h, summary, BEARER)
        await h.deliver()
    assert kinds(notes) == ["summary", "summary"]


# --- links ---


async def test_a_replayed_link_does_not_move_the_session_back(h: Harness) -> None:
    assert (await link_request(h, "c1")).json()["status"] == "linked"
    assert (await link_request(h, "c2")).json()["status"] == "linked"

    replay = await link_request(h, "c1")

    assert replay.status_code == 200
    assert replay.json() == {"status": "duplicate", "session_id": "s1", "conversation_id": "c2"}
    assert await conversation_of(h) == "c2"


async def test_a_replayed_batch_does_not_relink_or_repoint_the_identity(h: Harness) -> None:
    """A batch naming a conversation links; replayed after a later link it must not undo it."""
    old = raw(batch("s1", ("A", T0), conversation_id="c1", user_id="u1"))
    assert (await ingest(h, old, BEARER)).json()["linked"] is True
    await link_request(h, "c2")

    again = await ingest(h, old, BEARER)

    assert again.json() == {"status": "accepted", "accepted": 0, "duplicates": 1, "linked": True}
    assert await conversation_of(h) == "c2"


async def test_each_payload_of_a_replayed_array_is_recognised(h: Harness) -> None:
    body = raw([batch("s1", ("A", T0)), batch("s2", ("B", T0))])
    first = await ingest(h, body, BEARER)
    again = await ingest(h, body, BEARER)
    assert first.json()["accepted"] == 2
    assert again.json() == {"status": "accepted", "accepted": 0, "duplicates": 2, "linked": False}


# --- proactive triggers ---


async def test_a_replayed_proactive_trigger_changes_nothing(h: Harness, clock: ManualClock) -> None:
    await ingest(h, raw(batch("s1", ("A", T0))), BEARER)
    trigger = raw({"trigger_id": "tour-1"})
    path = "/sessions/acme/s1/proactive"
    assert (await h.client.post(path, content=trigger, headers=BEARER)).status_code == 200
    clock.advance(3600)  # proactive timed out, the cooldown is over: the gate is open again

    replay = await h.client.post(path, content=trigger, headers=BEARER)

    assert replay.status_code == 409
    assert replay.json()["error"] == "replayed_request"
    state = (await h.client.get("/sessions/acme/s1", headers=BEARER)).json()
    assert (state["current_state"], state["can_deliver_proactive"]) == ("thinking", True)


# --- Standard Webhooks on ingest ---


async def test_standard_webhooks_signed_ingest_is_accepted(h: Harness) -> None:
    body = raw(batch("s1", ("A", T0)))
    r = await ingest(h, body, webhook_signed(body, now=h.clock.now(), msg_id="msg_1"))
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 1


async def test_a_webhook_id_is_applied_once(h: Harness) -> None:
    """The id identifies the message: a resend with the same id (even re-signed) is a replay,
    a new id with the same body is a new message."""
    body = raw({"type": "summary", "session_id": "s1", "summary": "Once."})
    first = await ingest(h, body, webhook_signed(body, now=h.clock.now(), msg_id="msg_1"))
    h.clock.advance(60)
    resent = await ingest(h, body, webhook_signed(body, now=h.clock.now(), msg_id="msg_1"))
    fresh = await ingest(h, body, webhook_signed(body, now=h.clock.now(), msg_id="msg_2"))
    assert [r.json()["accepted"] for r in (first, resent, fresh)] == [1, 0, 1]


@pytest.mark.parametrize(
    "tamper",
    [
        {"webhook-timestamp": str(int(T0) - 301)},
        {"webhook-timestamp": "9" * 309},
        {"webhook-id": "m" * 257},
        {"webhook-signature": "v1,bm90IGl0"},
    ],
    ids=["stale", "309-digit-timestamp", "long-id", "wrong-signature"],
)
async def test_unverifiable_standard_webhooks_ingest_is_401(
    h: Harness, clock: ManualClock, tamper: dict[str, str]
) -> None:
    clock.t = T0
    body = raw(batch("s1", ("A", T0)))
    headers = {**webhook_signed(body, now=T0, msg_id="msg_1"), **tamper}
    r = await ingest(h, body, headers)
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "unauthorized"


def test_ingest_webhook_secret_must_be_a_standard_webhooks_secret() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        make_product(ingest_webhook_secret="not-a-whsec-secret-at-all")


# --- reads ---


async def test_a_body_signature_is_not_a_credential_for_reads(h: Harness) -> None:
    await ingest(h, raw(batch("s1", ("A", T0))), BEARER)
    empty_body_signature = connector_signed(b"")
    r = await h.client.get("/sessions/acme/s1", headers=empty_body_signature)
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized"


@pytest.mark.parametrize("token", [INGEST_TOKEN, ADMIN])
async def test_reads_take_the_ingest_or_admin_bearer_token(h: Harness, token: str) -> None:
    await ingest(h, raw(batch("s1", ("A", T0))), BEARER)
    r = await h.client.get("/sessions/acme/s1", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200
    assert r.json()["session_id"] == "s1"
