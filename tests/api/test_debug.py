"""``/debug/*``: hidden without an admin token, and what operators see and replay."""

from __future__ import annotations

import json

import httpx
import respx

from tests.conftest import INGEST_TOKEN, NOTES_URL, ManualClock, batch, make_product
from tests.harness import running_app

ADMIN = {"authorization": "Bearer admin-token-0123456789"}
T0 = 1_705_322_090.0


async def test_debug_routes_do_not_exist_without_an_admin_token(redis_client, clock) -> None:
    async with running_app(products=[make_product()], clock=clock, redis_client=redis_client) as h:
        r = await h.client.get("/debug/products", headers=ADMIN)
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"


async def test_debug_routes_need_the_admin_token(redis_client, clock) -> None:
    async with running_app(
        products=[make_product()],
        clock=clock,
        redis_client=redis_client,
        admin_token="admin-token-0123456789",
    ) as h:
        wrong = await h.client.get("/debug/products", headers={"authorization": "Bearer nope"})
        ingest = await h.client.get(
            "/debug/products", headers={"authorization": f"Bearer {INGEST_TOKEN}"}
        )
        right = await h.client.get("/debug/products", headers=ADMIN)
    assert wrong.status_code == ingest.status_code == 401
    assert right.status_code == 200
    assert INGEST_TOKEN not in right.text
    (product,) = right.json()["products"]
    assert product["id"] == "acme" and product["ingest_token"].startswith("****")


async def test_session_view_shows_buffers_link_and_note_ids(
    redis_client, clock: ManualClock
) -> None:
    with respx.mock() as mock:
        mock.post(NOTES_URL).mock(return_value=httpx.Response(200, json={"id": "note-7"}))
        async with running_app(
            products=[make_product()],
            clock=clock,
            redis_client=redis_client,
            admin_token="admin-token-0123456789",
        ) as h:
            await h.post_batch("acme", batch("s1", ("A", T0), user_id="u1"))
            before = (await h.client.get("/debug/sessions/acme/s1", headers=ADMIN)).json()
            await h.client.post(
                "/sessions/link",
                json={"product_id": "acme", "session_id": "s1", "conversation_id": "c1"},
                headers=ADMIN,
            )
            await h.deliver()
            await h.post_batch("acme", batch("s1", ("B", T0 + 5)))
            after = (await h.client.get("/debug/sessions/acme/s1", headers=ADMIN)).json()
            missing = await h.client.get("/debug/sessions/acme/nope", headers=ADMIN)
    assert [a["description"] for a in before["pre_link_buffer"]] == ["A"]
    assert "conversation" not in before["state"] and before["next_note_due_at"] is None
    assert after["state"]["conversation"] == "c1"
    assert after["pre_link_buffer"] == []
    assert [a["description"] for a in after["outbox"]] == ["B"]
    assert after["posted_notes"] == [
        {"kind": "actions", "conversation_id": "c1", "note_id": "note-7"}
    ]
    assert after["next_note_due_at"] == clock.now() + 0.15
    assert missing.status_code == 404


async def test_dead_letters_are_listed_and_replayed(redis_client, clock: ManualClock) -> None:
    with respx.mock() as mock:
        route = mock.post(NOTES_URL).mock(
            side_effect=[httpx.Response(403), httpx.Response(200, json={"id": "ok"})]
        )
        async with running_app(
            products=[make_product(post_link_debounce_s=0)],
            clock=clock,
            redis_client=redis_client,
            admin_token="admin-token-0123456789",
        ) as h:
            await h.post_batch("acme", batch("s1", ("A", T0)))
            await h.post_webhook(
                "acme",
                {"event": "conversation.created", "conversation_id": "c1", "session_id": "s1"},
            )
            assert await h.deliver() == 1  # 403: dead-lettered at once
            listed = (await h.client.get("/debug/dead-letters/acme", headers=ADMIN)).json()
            metrics_text = (await h.client.get("/metrics")).text
            replay = await h.client.post("/debug/dead-letters/acme/replay", headers=ADMIN)
            again = await h.client.post("/debug/dead-letters/acme/replay", headers=ADMIN)
            assert await h.deliver() == 1
            empty = (await h.client.get("/debug/dead-letters/acme", headers=ADMIN)).json()
    assert listed["total"] == 1
    (letter,) = listed["dead_letters"]
    assert letter["session_id"] == "s1" and letter["conversation_id"] == "c1"
    assert [a["description"] for a in letter["actions"]] == ["A"]
    assert "403" in letter["error"]
    assert 'bridge_dead_letters{product="acme"} 1.0' in metrics_text
    assert replay.json() == {"product_id": "acme", "replayed": 1}
    assert again.json()["replayed"] == 0
    delivered = json.loads(route.calls[-1].request.content)
    assert delivered["body"].endswith("\n\n[1] A")
    assert empty["total"] == 0


async def test_delivery_view_shows_the_budget_in_flight_and_circuit(
    redis_client, clock: ManualClock
) -> None:
    clock.t = T0
    limited = make_product("acme", max_notes_per_minute=60, max_notes_in_flight=3)
    free = make_product("free")
    with respx.mock() as mock:
        mock.post(NOTES_URL).mock(return_value=httpx.Response(503))
        async with running_app(
            products=[limited, free],
            clock=clock,
            redis_client=redis_client,
            admin_token="admin-token-0123456789",
        ) as h:
            fresh = (await h.client.get("/debug/delivery/acme", headers=ADMIN)).json()
            for n in range(5):
                body = batch(f"s{n}", ("A", T0), conversation_id=f"c{n}")
                assert (await h.post_batch("acme", body)).status_code == 202
            assert await h.deliver() == 5  # three at a time (the cap); all fail (503)
            after = (await h.client.get("/debug/delivery/acme", headers=ADMIN)).json()
            unlimited = (await h.client.get("/debug/delivery/free", headers=ADMIN)).json()
    assert fresh == {
        "product_id": "acme",
        "note_budget": {"per_minute": 60, "burst": 6, "available_now": 6, "next_free_at": T0},
        "max_notes_in_flight": 3,
        "in_flight": 0,
        "circuit": {"state": "closed", "consecutive_failures": 0, "open_until": None},
    }
    assert after["note_budget"]["available_now"] == 1
    assert after["in_flight"] == 0
    circuit = after["circuit"]
    assert (circuit["state"], circuit["consecutive_failures"]) == ("open", 5)
    assert circuit["open_until"] > T0
    assert unlimited["note_budget"] is None
