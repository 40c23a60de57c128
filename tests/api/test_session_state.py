"""The session FSM, its timeouts and the proactive gate."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis

from tests.conftest import INGEST_TOKEN, ManualClock, batch, make_product
from tests.harness import Harness, running_app

AUTH = {"authorization": f"Bearer {INGEST_TOKEN}"}
T0 = 1_705_322_090.0


@pytest.fixture
async def h(redis_client: aioredis.Redis, clock: ManualClock) -> AsyncIterator[Harness]:
    products = [make_product(), make_product("other", ingest_token="other-token-0123456789")]
    async with running_app(products=products, clock=clock, redis_client=redis_client) as harness:
        await harness.post_batch("acme", batch("s1", ("A", T0), user_id="u1", email="a@b.c"))
        yield harness


async def state(h: Harness, session_id: str = "s1") -> dict[str, object]:
    r = await h.client.get(f"/sessions/acme/{session_id}", headers=AUTH)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def user_message(h: Harness, conversation_id: str = "c1") -> None:
    body = {"event": "conversation.replied", "conversation_id": conversation_id, "session_id": "s1"}
    r = await h.post_webhook("acme", body)
    assert r.status_code == 200, r.text


_TRIGGERS = itertools.count(1)


async def go_proactive(
    h: Harness, session_id: str = "s1", trigger_id: str | None = None
) -> httpx.Response:
    """Each call is a new trigger (a new request) unless ``trigger_id`` repeats one."""
    trigger_id = trigger_id or f"t-{next(_TRIGGERS)}"
    return await h.client.post(
        f"/sessions/acme/{session_id}/proactive", json={"trigger_id": trigger_id}, headers=AUTH
    )


async def test_a_new_session_is_thinking_and_may_go_proactive(h: Harness) -> None:
    s = await state(h)
    assert s["current_state"] == "thinking"
    assert (s["can_deliver_proactive"], s["proactive_reason"]) == (True, "ok")
    assert s["conversation_linked"] is False and s["conversation_id"] is None
    assert s["metadata"] == {"user_id": "u1", "email": "a@b.c"}
    assert s["pending_actions"] == 1 and s["queued_actions"] == 0
    assert s["created_at"] == h.clock.now() and s["updated_at"] == h.clock.now()


async def test_a_user_message_makes_the_session_reactive(h: Harness) -> None:
    await user_message(h)
    s = await state(h)
    assert s["current_state"] == "reactive_assistance"
    assert s["last_interaction_at"] == h.clock.now()
    assert (s["can_deliver_proactive"], s["proactive_reason"]) == (
        False,
        "v2_state_reactive_assistance",
    )
    refused = await go_proactive(h)
    assert refused.status_code == 409
    assert refused.json()["error"] == "proactive_not_allowed"
    assert refused.json()["reason"] == "v2_state_reactive_assistance"


async def test_reactive_times_out_to_thinking_then_cools_down(h: Harness) -> None:
    await user_message(h)
    last = h.clock.now()
    h.clock.advance(19.9)
    assert (await state(h))["current_state"] == "reactive_assistance"
    h.clock.advance(0.1)
    s = await state(h)
    assert s["current_state"] == "thinking"
    assert s["cooldown_until"] == last + 20 + 60
    assert (s["can_deliver_proactive"], s["proactive_reason"]) == (False, "v2_cooldown_active")
    assert (await go_proactive(h)).json()["reason"] == "v2_cooldown_active"
    h.clock.advance(60)
    assert (await state(h))["proactive_reason"] == "ok"
    assert (await go_proactive(h)).status_code == 200


async def test_timeouts_apply_even_when_the_state_is_first_read_much_later(h: Harness) -> None:
    await user_message(h)
    h.clock.advance(20 + 60 + 5)  # nobody looked during the timeout or the cooldown
    s = await state(h)
    assert (s["current_state"], s["proactive_reason"]) == ("thinking", "ok")


async def test_proactive_is_entered_once_and_times_out(h: Harness) -> None:
    entered = await go_proactive(h)
    assert entered.status_code == 200
    assert entered.json()["current_state"] == "proactive_assistance"
    again = await go_proactive(h)
    assert again.status_code == 409
    assert again.json()["reason"] == "v2_state_proactive_assistance"
    h.clock.advance(20)
    s = await state(h)
    assert (s["current_state"], s["proactive_reason"]) == ("thinking", "v2_cooldown_active")


async def test_a_user_message_during_proactive_makes_it_reactive(h: Harness) -> None:
    assert (await go_proactive(h)).status_code == 200
    await user_message(h)
    assert (await state(h))["current_state"] == "reactive_assistance"


async def test_unknown_session_is_404(h: Harness) -> None:
    r = await h.client.get("/sessions/acme/nope", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"] == "unknown_session"
    assert (await go_proactive(h, "nope")).status_code == 404


async def test_state_api_needs_the_products_credentials(h: Harness) -> None:
    other = {"authorization": "Bearer other-token-0123456789"}
    assert (await h.client.get("/sessions/acme/s1", headers=other)).status_code == 401
    assert (await h.client.get("/sessions/acme/s1")).status_code == 401
    r = await h.client.post("/sessions/acme/s1/proactive", json={"trigger_id": "t"}, headers=other)
    assert r.status_code == 401
    assert (await state(h))["current_state"] == "thinking"


async def test_proactive_body_is_validated(h: Harness) -> None:
    r = await h.client.post("/sessions/acme/s1/proactive", json={}, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["fields"][0]["loc"] == "trigger_id"


async def test_per_product_timeouts(redis_client: aioredis.Redis, clock: ManualClock) -> None:
    product = make_product(interaction_timeout_s=5, cooldown_period_s=10)
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        await h.post_batch("acme", batch("s1", ("A", T0)))
        await user_message(h)
        clock.advance(5)
        s = await state(h)
        assert (s["current_state"], s["cooldown_until"]) == ("thinking", clock.now() + 10)


async def test_concurrent_proactive_requests_from_two_instances_admit_one(
    redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    products = [make_product()]
    async with (
        running_app(products=products, clock=clock, redis_client=redis_client) as first,
        running_app(products=products, clock=clock, redis_client=redis_client) as second,
    ):
        await first.post_batch("acme", batch("s1", ("A", T0)))
        results = await asyncio.gather(*(go_proactive(h) for h in [first, second] * 5))
    assert sorted(r.status_code for r in results) == [200] + [409] * 9


async def test_a_user_message_and_a_proactive_request_do_not_lose_each_other(
    h: Harness,
) -> None:
    """Whichever runs first, the end state reflects both: reactive wins over proactive."""
    await asyncio.gather(go_proactive(h), user_message(h))
    assert (await state(h))["current_state"] == "reactive_assistance"
