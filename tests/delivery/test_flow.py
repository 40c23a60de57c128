"""The delivery policy end to end in-process: batches in, notes out, against a real Redis."""

from __future__ import annotations

import json

import httpx
import respx

from tests.conftest import NOTES_URL, ManualClock, batch, make_product
from tests.harness import running_app

T0 = 1_705_322_090.0  # 2024-01-15 12:34:50 UTC


def posted_bodies(route: respx.Route) -> list[dict[str, object]]:
    return [json.loads(call.request.content) for call in route.calls]


async def test_prelink_flush_then_debounced_note(redis_client, clock: ManualClock) -> None:
    product = make_product()
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(NOTES_URL).mock(return_value=httpx.Response(200, json={"id": "n1"}))
        async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
            r = await h.post_batch("acme", batch("s1", ("A", T0), ("B", T0 + 0.5), ("C", T0 + 1.2)))
            assert r.status_code == 202, r.text
            assert r.json() == {
                "status": "accepted",
                "accepted": 3,
                "duplicates": 0,
                "linked": False,
            }
            assert await h.deliver() == 0

            r = await h.post_webhook(
                "acme",
                {"event": "conversation.created", "conversation_id": "c1", "session_id": "s1"},
            )
            assert r.json() == {"status": "linked", "session_id": "s1", "conversation_id": "c1"}
            await h.post_batch("acme", batch("s1", ("D", T0 + 9)))
            assert await h.deliver() == 1
            first = posted_bodies(route)
            assert len(first) == 1 and first[0]["kind"] == "actions"
            assert first[0]["body"] == (
                "session_id: s1\ntimestamp: 2024-01-15 12:34:50 UTC\n\n[1] A\n[2] B\n\n[3] C"
            )
            clock.advance(0.2)
            assert await h.deliver() == 1
            second = posted_bodies(route)[1]
            assert second["body"] == "session_id: s1\ntimestamp: 2024-01-15 12:34:59 UTC\n\n[1] D"
