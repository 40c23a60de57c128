"""``/chatbot-webhook/{product_id}`` for platform ``http``."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import respx

from app.security import decode_whsec, standard_webhook_headers
from tests.conftest import (
    INGEST_TOKEN,
    NOTES_URL,
    WEBHOOK_SECRET,
    ManualClock,
    batch,
    make_product,
)
from tests.harness import Harness, running_app, signed_webhook

T0 = 1_705_322_090.0  # 2024-01-15 12:34:50 UTC
CREATED = "conversation.created"
REPLIED = "conversation.replied"
OTHER_SECRET = "whsec_" + base64.b64encode(b"x" * 32).decode()


@pytest.fixture
async def h(redis_client: aioredis.Redis, clock: ManualClock) -> AsyncIterator[Harness]:
    async with running_app(
        products=[make_product()], clock=clock, redis_client=redis_client
    ) as harness:
        yield harness


def event(name: str = CREATED, **fields: Any) -> dict[str, Any]:
    return {"event": name, **fields}


def answer(status: str, session_id: str | None, conversation_id: str | None) -> dict[str, Any]:
    return {"status": status, "session_id": session_id, "conversation_id": conversation_id}


async def post(h: Harness, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    r = await h.post_webhook("acme", body, **kwargs)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def is_linked(h: Harness, session_id: str) -> bool:
    """Whether a later batch for the session reports it linked."""
    r = await h.post_batch("acme", batch(session_id, ("probe", T0 + 50)))
    assert r.status_code == 202, r.text
    linked: bool = r.json()["linked"]
    return linked


async def send_raw(
    h: Harness, raw: bytes, headers: dict[str, str], product_id: str = "acme"
) -> httpx.Response:
    return await h.client.post(f"/chatbot-webhook/{product_id}", content=raw, headers=headers)


def sign_raw(raw: bytes, *, now: float, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    signature = standard_webhook_headers(
        decode_whsec(secret), msg_id="msg_raw", timestamp=int(now), body=raw
    )
    return {**signature, "content-type": "application/json"}


# -- probe and verification ---------------------------------------------------------------------


async def test_head_answers_200_for_a_known_product(h: Harness) -> None:
    r = await h.client.head("/chatbot-webhook/acme")
    assert r.status_code == 200


async def test_head_for_an_unknown_product_is_404(h: Harness) -> None:
    r = await h.client.head("/chatbot-webhook/nope")
    assert r.status_code == 404


async def test_webhook_for_an_unknown_product_is_404(h: Harness) -> None:
    r = await h.post_webhook("nope", event(conversation_id="c1", session_id="s1"))
    assert r.status_code == 404
    assert r.json()["error"] == "unknown_product"


def _wrong_secret(body: bytes, now: float) -> tuple[bytes, dict[str, str]]:
    return body, sign_raw(body, now=now, secret=OTHER_SECRET)


def _no_signature_headers(body: bytes, now: float) -> tuple[bytes, dict[str, str]]:
    return body, {"content-type": "application/json"}


def _missing_signature(body: bytes, now: float) -> tuple[bytes, dict[str, str]]:
    headers = sign_raw(body, now=now)
    del headers["webhook-signature"]
    return body, headers


def _missing_timestamp(body: bytes, now: float) -> tuple[bytes, dict[str, str]]:
    headers = sign_raw(body, now=now)
    del headers["webhook-timestamp"]
    return body, headers


def _stale(body: bytes, now: float) -> tuple[bytes, dict[str, str]]:
    return body, sign_raw(body, now=now - 301)


def _future(body: bytes, now: float) -> tuple[bytes, dict[str, str]]:
    return body, sign_raw(body, now=now + 301)


def _tampered(body: bytes, now: float) -> tuple[bytes, dict[str, str]]:
    return body.replace(b'"c1"', b'"c2"'), sign_raw(body, now=now)


def _other_id(body: bytes, now: float) -> tuple[bytes, dict[str, str]]:
    return body, {**sign_raw(body, now=now), "webhook-id": "msg_other"}


def _v2_scheme(body: bytes, now: float) -> tuple[bytes, dict[str, str]]:
    headers = sign_raw(body, now=now)
    headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    return body, headers


def _huge_timestamp(body: bytes, now: float) -> tuple[bytes, dict[str, str]]:
    # 309 digits: int() takes it, but it overflows a float (once a 500 before the check).
    return body, {**sign_raw(body, now=now), "webhook-timestamp": "9" * 309}


def _long_id(body: bytes, now: float) -> tuple[bytes, dict[str, str]]:
    return body, {**sign_raw(body, now=now), "webhook-id": "m" * 257}


def _huge_signature_list(body: bytes, now: float) -> tuple[bytes, dict[str, str]]:
    headers = sign_raw(body, now=now)
    headers["webhook-signature"] = "v1,AAAA " * 1000 + headers["webhook-signature"]
    return body, headers


Forge = Callable[[bytes, float], tuple[bytes, dict[str, str]]]


@pytest.mark.parametrize(
    "forge",
    [
        _wrong_secret,
        _no_signature_headers,
        _missing_signature,
        _missing_timestamp,
        _stale,
        _future,
        _tampered,
        _other_id,
        _v2_scheme,
        _huge_timestamp,
        _long_id,
        _huge_signature_list,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
async def test_unverifiable_webhook_is_401_and_links_nothing(h: Harness, forge: Forge) -> None:
    raw = json.dumps(event(conversation_id="c1", session_id="s1")).encode()
    sent, headers = forge(raw, h.clock.now())
    r = await send_raw(h, sent, headers)
    assert r.status_code == 401, r.text
    body = r.json()
    assert body["error"] == "invalid_signature"
    assert body["detail"]
    assert await is_linked(h, "s1") is False


@pytest.mark.parametrize("age_s", [-299, 299])
async def test_timestamp_within_five_minutes_is_accepted(h: Harness, age_s: float) -> None:
    raw = json.dumps(event(conversation_id="c1", session_id="s1")).encode()
    r = await send_raw(h, raw, sign_raw(raw, now=h.clock.now() - age_s))
    assert r.status_code == 200, r.text
    assert r.json() == answer("linked", "s1", "c1")


async def test_signature_list_with_one_valid_entry_is_accepted(h: Harness) -> None:
    # Secret rotation: several space-separated signatures, one of which matches.
    raw = json.dumps(event(conversation_id="c1", session_id="s1")).encode()
    headers = sign_raw(raw, now=h.clock.now())
    stale = sign_raw(raw, now=h.clock.now(), secret=OTHER_SECRET)["webhook-signature"]
    headers["webhook-signature"] = f"{stale} {headers['webhook-signature']}"
    r = await send_raw(h, raw, headers)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"'], ids=["broken", "list", "str"])
async def test_signed_body_that_is_not_a_json_object_is_400(h: Harness, raw: bytes) -> None:
    r = await send_raw(h, raw, sign_raw(raw, now=h.clock.now()))
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "invalid_webhook"
    assert body["detail"]


async def test_link_event_with_an_invalid_session_id_is_400(h: Harness) -> None:
    r = await h.post_webhook("acme", event(conversation_id="c1", session_id="not valid!"))
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_webhook"
    assert "session_id" in r.json()["detail"]


async def test_link_event_without_a_conversation_is_400(h: Harness) -> None:
    r = await h.post_webhook("acme", event(session_id="s1"))
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_webhook"


async def test_webhook_that_is_not_json_content_is_415(h: Harness) -> None:
    raw = json.dumps(event(conversation_id="c1", session_id="s1")).encode()
    headers = {**sign_raw(raw, now=h.clock.now()), "content-type": "text/plain"}
    r = await send_raw(h, raw, headers)
    assert r.status_code == 415
    assert r.json()["error"] == "unsupported_media_type"


# -- link semantics ------------------------------------------------------------------------------


async def test_created_with_a_session_id_links_the_session(h: Harness) -> None:
    assert await is_linked(h, "s1") is False
    result = await post(h, event(conversation_id="c1", session_id="s1"))
    assert result == answer("linked", "s1", "c1")
    assert await is_linked(h, "s1") is True


async def test_same_delivery_twice_is_a_duplicate(h: Harness) -> None:
    body = event(conversation_id="c1", session_id="s1")
    assert (await post(h, body, msg_id="msg_1"))["status"] == "linked"
    assert await post(h, body, msg_id="msg_1") == answer("duplicate", "s1", "c1")


async def test_duplicate_delivery_does_not_apply_a_changed_body(h: Harness) -> None:
    await post(h, event(conversation_id="c1", session_id="s1"), msg_id="msg_1")
    again = await post(h, event(conversation_id="c2", session_id="s1"), msg_id="msg_1")
    assert again["status"] == "duplicate"
    # Still on c1: re-linking to c1 is a no-op.
    assert (await post(h, event(conversation_id="c1", session_id="s1")))["status"] == (
        "already_linked"
    )


async def test_same_link_with_a_new_delivery_is_already_linked(h: Harness) -> None:
    body = event(conversation_id="c1", session_id="s1")
    assert (await post(h, body, msg_id="msg_1"))["status"] == "linked"
    assert await post(h, body, msg_id="msg_2") == answer("already_linked", "s1", "c1")


async def test_reply_on_a_linked_session_keeps_its_conversation(h: Harness) -> None:
    await post(h, event(conversation_id="c1", session_id="s1"))
    result = await post(h, event(REPLIED, conversation_id="c2", session_id="s1"))
    assert result == answer("already_linked", "s1", "c1")
    # The link is still c1: repeating it is a no-op, moving it to c2 is a change.
    assert (await post(h, event(REPLIED, conversation_id="c1", session_id="s1")))["status"] == (
        "already_linked"
    )
    assert (await post(h, event(conversation_id="c2", session_id="s1")))["status"] == "linked"


async def test_created_with_a_different_conversation_relinks(h: Harness) -> None:
    await post(h, event(conversation_id="c1", session_id="s1"))
    result = await post(h, event(conversation_id="c2", session_id="s1"))
    assert result == answer("linked", "s1", "c2")
    # The session is now on c2: a reply for c2 changes nothing.
    after = await post(h, event(REPLIED, conversation_id="c2", session_id="s1"))
    assert after == answer("already_linked", "s1", "c2")


async def test_reply_on_an_unlinked_session_links_it(h: Harness) -> None:
    result = await post(h, event(REPLIED, conversation_id="c1", session_id="s1"))
    assert result == answer("linked", "s1", "c1")
    assert await is_linked(h, "s1") is True


@pytest.mark.parametrize("name", ["conversation.closed", "ping", "note.created", ""])
async def test_unknown_event_is_ignored(h: Harness, name: str) -> None:
    result = await post(h, event(name, conversation_id="c1", session_id="s1"))
    assert result["status"] == "ignored"
    assert await is_linked(h, "s1") is False


async def test_event_that_is_not_a_string_is_400(h: Harness) -> None:
    r = await h.post_webhook("acme", {"event": 7, "conversation_id": "c1", "session_id": "s1"})
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_webhook"


async def test_webhook_with_no_session_user_or_email_is_ignored(h: Harness) -> None:
    result = await post(h, event(conversation_id="c1"))
    assert result == answer("ignored", None, "c1")


# -- finding the session -------------------------------------------------------------------------


async def test_session_is_found_by_user_id(h: Harness) -> None:
    await h.post_batch("acme", batch("s1", ("A", T0), user_id="u1"))
    result = await post(h, event(conversation_id="c1", user_id="u1"))
    assert result == answer("linked", "s1", "c1")


async def test_user_id_resolves_to_the_latest_session(h: Harness) -> None:
    await h.post_batch("acme", batch("s1", ("A", T0), user_id="u1"))
    await h.post_batch("acme", batch("s2", ("B", T0 + 5), user_id="u1"))
    result = await post(h, event(conversation_id="c1", user_id="u1"))
    assert result == answer("linked", "s2", "c1")
    assert await is_linked(h, "s1") is False


async def test_user_id_carried_by_the_actions_is_indexed(h: Harness) -> None:
    body = {
        "session_id": "s1",
        "actions": [{"description": "A", "timestamp_start": T0, "user_id": "u5"}],
    }
    await h.post_batch("acme", body)
    assert await post(h, event(conversation_id="c1", user_id="u5")) == answer("linked", "s1", "c1")


async def test_session_is_found_by_email_case_insensitively(h: Harness) -> None:
    await h.post_batch("acme", batch("s1", ("A", T0), email="Ann@Example.com"))
    result = await post(h, event(conversation_id="c1", email="ann@example.COM"))
    assert result == answer("linked", "s1", "c1")


async def test_explicit_session_id_wins_over_the_identity_index(h: Harness) -> None:
    await h.post_batch("acme", batch("s1", ("A", T0), user_id="u1"))
    result = await post(h, event(conversation_id="c1", user_id="u1", session_id="s2"))
    assert result == answer("linked", "s2", "c1")
    assert await is_linked(h, "s1") is False


async def test_user_id_is_tried_before_email(h: Harness) -> None:
    await h.post_batch("acme", batch("s1", ("A", T0), user_id="u1"))
    await h.post_batch("acme", batch("s2", ("A", T0), email="ann@example.com"))
    result = await post(h, event(conversation_id="c1", user_id="u1", email="ann@example.com"))
    assert result == answer("linked", "s1", "c1")


async def test_identity_of_another_product_is_not_used(
    redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    products = [make_product("acme"), make_product("beta")]
    async with running_app(products=products, clock=clock, redis_client=redis_client) as h:
        await h.post_batch("beta", batch("s1", ("A", T0), user_id="u1"))
        r = await h.post_webhook("acme", event(conversation_id="c1", user_id="u1"))
        assert r.json() == answer("pending_identity", None, "c1")


@pytest.mark.parametrize(
    ("webhook_identity", "batch_identity"),
    [
        ({"user_id": "u7"}, {"user_id": "u7"}),
        ({"email": "Bob@Example.io"}, {"email": "bob@example.IO"}),
    ],
    ids=["user_id", "email"],
)
async def test_pending_identity_links_on_the_first_batch_and_flushes(
    redis_client: aioredis.Redis,
    clock: ManualClock,
    webhook_identity: dict[str, str],
    batch_identity: dict[str, str],
) -> None:
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(NOTES_URL).mock(return_value=httpx.Response(200, json={"id": "n1"}))
        async with running_app(
            products=[make_product()], clock=clock, redis_client=redis_client
        ) as h:
            result = await post(h, event(conversation_id="c7", **webhook_identity))
            assert result == answer("pending_identity", None, "c7")
            r = await h.post_batch("acme", batch("s7", ("A", T0), **batch_identity))
            assert r.json() == {
                "status": "accepted",
                "accepted": 1,
                "duplicates": 0,
                "linked": True,
            }
            assert await h.deliver() == 1
    assert route.call_count == 1
    note = json.loads(route.calls.last.request.content)
    assert note["conversation_id"] == "c7"
    assert note["session_id"] == "s7"
    assert note["body"] == "session_id: s7\ntimestamp: 2024-01-15 12:34:50 UTC\n\n[1] A"


async def test_pending_identity_is_used_once(h: Harness) -> None:
    await post(h, event(conversation_id="c7", user_id="u7"))
    assert (await h.post_batch("acme", batch("s7", ("A", T0), user_id="u7"))).json()["linked"]
    # A later session of the same user is not linked to the old pending conversation.
    r = await h.post_batch("acme", batch("s8", ("A", T0), user_id="u7"))
    assert r.json()["linked"] is False


async def test_pending_identity_does_not_link_other_users(h: Harness) -> None:
    await post(h, event(conversation_id="c7", user_id="u7"))
    r = await h.post_batch("acme", batch("s8", ("A", T0), user_id="u8"))
    assert r.json()["linked"] is False


async def test_link_by_webhook_flushes_buffered_actions_to_the_conversation(
    redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(NOTES_URL).mock(return_value=httpx.Response(200, json={"id": "n1"}))
        async with running_app(
            products=[make_product()], clock=clock, redis_client=redis_client
        ) as h:
            await h.post_batch("acme", batch("s1", ("B", T0 + 0.5), ("A", T0)))
            assert await h.deliver() == 0
            await post(h, event(conversation_id="c1", session_id="s1"))
            assert await h.deliver() == 1
    note = json.loads(route.calls.last.request.content)
    assert (note["conversation_id"], note["kind"]) == ("c1", "actions")
    assert note["body"] == "session_id: s1\ntimestamp: 2024-01-15 12:34:50 UTC\n\n[1] A\n[2] B"


async def test_ingest_token_is_not_a_webhook_credential(h: Harness) -> None:
    raw = json.dumps(event(conversation_id="c1", session_id="s1")).encode()
    headers = {"content-type": "application/json", "authorization": f"Bearer {INGEST_TOKEN}"}
    r = await send_raw(h, raw, headers)
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_signature"


async def test_webhook_signed_for_another_product_is_rejected(
    redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    beta = make_product(
        "beta",
        http={
            "url": NOTES_URL,
            "signing_secret": OTHER_SECRET,
            "webhook_secret": OTHER_SECRET,
        },
    )
    async with running_app(
        products=[make_product(), beta], clock=clock, redis_client=redis_client
    ) as h:
        raw, headers = signed_webhook(event(conversation_id="c1", session_id="s1"), now=clock.now())
        r = await send_raw(h, raw, headers, product_id="beta")
        assert r.status_code == 401
        assert r.json()["error"] == "invalid_signature"
        raw, headers = signed_webhook(
            event(conversation_id="c1", session_id="s1"), now=clock.now(), secret=OTHER_SECRET
        )
        assert (await send_raw(h, raw, headers, product_id="beta")).status_code == 200
