"""The delivery policy through the app and worker, on a real Redis, platform mocked."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx
from prometheus_client import REGISTRY

from app.store import keys
from tests.conftest import NOTES_URL, ManualClock, batch, make_product
from tests.harness import Harness, running_app

T0 = 1_705_322_090.0  # 2024-01-15 12:34:50 UTC, the start of a 3 s bin minus 2/3 s


def notes(route: respx.Route) -> list[dict[str, Any]]:
    return [json.loads(call.request.content) for call in route.calls]


def lines(note: dict[str, Any]) -> list[str]:
    return str(note["body"]).split("\n\n", 1)[1].split("\n")


@pytest.fixture
def bot() -> Any:
    with respx.mock(assert_all_called=False) as mock:
        yield mock.post(NOTES_URL).mock(return_value=httpx.Response(200, json={"id": "n"}))


async def link(h: Harness, session_id: str = "s1", conversation_id: str = "c1") -> None:
    body = {"event": "conversation.created", "conversation_id": conversation_id}
    r = await h.post_webhook("acme", {**body, "session_id": session_id})
    assert r.json()["status"] == "linked", r.text


async def test_prelink_window_is_measured_on_the_actions_clock(redis_client, clock, bot) -> None:
    product = make_product(pre_link_window_s=10)
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        # Timestamps a day behind the server clock: skew must not empty the buffer.
        old = T0 - 86_400
        await h.post_batch("acme", batch("s1", ("A", old), ("B", old + 5)))
        r = await h.post_batch("acme", batch("s1", ("C", old + 12)))
        assert r.json()["accepted"] == 1
        await link(h)
        await h.deliver()
    assert lines(notes(bot)[0]) == ["[1] B", "", "[2] C"]
    dropped = REGISTRY.get_sample_value(
        "bridge_actions_dropped_total", {"product": "acme", "reason": "prelink_window"}
    )
    assert dropped is not None and dropped >= 1


async def test_prelink_cap_keeps_the_newest_actions(redis_client, clock, bot) -> None:
    product = make_product(max_pending_actions=3, bin_seconds=0)
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        await h.post_batch("acme", batch("s1", *[(f"a{i}", T0 + i) for i in range(5)]))
        await h.post_batch("acme", batch("s1", ("late-but-old", T0 - 1)))
        await link(h)
        await h.deliver()
    assert lines(notes(bot)[0]) == ["[1] a2", "[2] a3", "[3] a4"]


async def test_at_link_flush_is_one_binned_note_before_postlink_notes(
    redis_client, clock: ManualClock, bot
) -> None:
    product = make_product()
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        await h.post_batch("acme", batch("s1", ("C", T0 + 1.2), ("A", T0), ("B", T0 + 0.5)))
        await link(h)
        await h.post_batch("acme", batch("s1", ("D", T0 + 30)))
        clock.advance(1)  # the post-link note is due too, but the flush goes first
        await h.deliver()
    sent = notes(bot)
    assert [n["body"] for n in sent] == [
        "session_id: s1\ntimestamp: 2024-01-15 12:34:50 UTC\n\n[1] A\n[2] B\n\n[3] C",
        "session_id: s1\ntimestamp: 2024-01-15 12:35:20 UTC\n\n[1] D",
    ]
    assert [len(n["actions"]) for n in sent] == [3, 1]
    assert {n["conversation_id"] for n in sent} == {"c1"}


async def test_debounce_posts_one_note_per_burst(redis_client, clock: ManualClock, bot) -> None:
    product = make_product(post_link_debounce_s=0.15, post_link_max_wait_s=5)
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        await link(h)
        for i in range(10):  # a burst: 10 batches 20 ms apart
            await h.post_batch("acme", batch("s1", (f"burst1-{i}", T0 + i)))
            clock.advance(0.02)
            assert await h.deliver() == 0
        clock.advance(0.15)
        assert await h.deliver() == 1
        clock.advance(2)  # a quiet period, then a second burst
        await h.post_batch("acme", batch("s1", ("burst2-0", T0 + 100)))
        clock.advance(0.1)
        await h.post_batch("acme", batch("s1", ("burst2-1", T0 + 101)))
        clock.advance(0.1)
        assert await h.deliver() == 0
        clock.advance(0.06)
        assert await h.deliver() == 1
    sent = notes(bot)
    assert len(sent) == 2
    assert lines(sent[0]) == [f"[{i + 1}] burst1-{i}" for i in range(10)]
    assert lines(sent[1]) == ["[1] burst2-0", "[2] burst2-1"]


async def test_max_wait_bounds_a_continuous_stream(redis_client, clock: ManualClock, bot) -> None:
    product = make_product(post_link_debounce_s=0.15, post_link_max_wait_s=0.5)
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        await link(h)
        posted_at = []
        for i in range(20):  # one batch every 100 ms for 2 s: never quiet for 150 ms
            await h.post_batch("acme", batch("s1", (f"a{i}", T0 + i)))
            clock.advance(0.1)
            if await h.deliver():
                posted_at.append(i)
    # The first note goes out once the oldest queued action has waited 0.5 s, then every
    # 0.5 s while the stream goes on.
    assert posted_at == [4, 9, 14, 19]
    assert [len(lines(n)) for n in notes(bot)] == [5, 5, 5, 5]


async def test_actions_posted_while_unlinked_then_new_link_are_not_lost(
    redis_client, clock: ManualClock, bot
) -> None:
    """A batch that names a conversation links with event NEW and flushes its own actions."""
    product = make_product()
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        await h.post_batch("acme", batch("s1", ("A", T0)))
        r = await h.post_batch("acme", batch("s1", ("B", T0 + 0.5), conversation_id="c9"))
        assert r.json()["linked"] is True
        await h.deliver()
    (note,) = notes(bot)
    assert note["conversation_id"] == "c9"
    assert lines(note) == ["[1] A", "[2] B"]


async def test_platform_failure_is_retried_and_loses_nothing(
    redis_client, clock: ManualClock
) -> None:
    product = make_product(post_link_debounce_s=0.1)
    with respx.mock() as mock:
        route = mock.post(NOTES_URL).mock(
            side_effect=[
                httpx.Response(503),
                httpx.Response(429, headers={"Retry-After": "7"}),
                httpx.Response(200, json={"id": "n1"}),
                httpx.Response(200, json={"id": "n2"}),
            ]
        )
        async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
            await link(h)
            await h.post_batch("acme", batch("s1", ("A", T0)))
            clock.advance(0.1)
            assert await h.deliver() == 1  # 503: backs off 0.25-0.5 s
            await h.post_batch("acme", batch("s1", ("B", T0 + 1)))
            clock.advance(0.5)
            assert await h.deliver() == 1  # 429 with Retry-After: 7
            clock.advance(6.5)
            assert await h.deliver() == 0  # the platform's wait hint is honoured
            clock.advance(0.6)
            assert await h.deliver() == 2  # the retried note, then the one B waited for
            assert await h.deliver() == 0
    sent = [(c.request.headers["webhook-id"], json.loads(c.request.content)) for c in route.calls]
    # A retry is the same note: same delivery id, same actions; B, queued during the
    # backoff, goes out in the next note under its own id.
    assert [lines(body) for _, body in sent] == [["[1] A"]] * 3 + [["[1] B"]]
    assert len({delivery_id for delivery_id, _ in sent[:3]}) == 1
    assert sent[3][0] != sent[0][0]


async def test_a_note_taken_over_after_a_crash_is_sent_unchanged(
    redis_client, clock: ManualClock, bot
) -> None:
    """A process died mid-post; whoever takes the lease over re-sends the very same note."""
    product = make_product(post_link_debounce_s=0)
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        await link(h)
        await h.post_batch("acme", batch("s1", ("A", T0)))
        found = await h.services.store.claim_due(
            now=clock.now(), limit=1, lease_s=30, max_note_actions=1000
        )
        (crashed,) = found.claims
        await h.post_batch("acme", batch("s1", ("B", T0 + 1)))
        clock.advance(31)
        assert await h.deliver() == 2
    ids = [call.request.headers["webhook-id"] for call in bot.calls]
    assert [lines(n) for n in notes(bot)] == [["[1] A"], ["[1] B"]]
    assert ids[0] == crashed.delivery_id and ids[1] != ids[0]


async def test_permanent_failure_goes_to_the_dead_letter_list(
    redis_client, clock: ManualClock
) -> None:
    product = make_product(post_link_debounce_s=0)
    with respx.mock() as mock:
        mock.post(NOTES_URL).mock(return_value=httpx.Response(400))
        async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
            await link(h)
            await h.post_batch("acme", batch("s1", ("A", T0)))
            assert await h.deliver() == 1
            clock.advance(120)
            assert await h.deliver() == 0
    entries = [
        json.loads(e) for e in await redis_client.zrange(keys.dead_letter_key("acme"), 0, -1)
    ]
    assert len(entries) == 1
    assert entries[0]["session_id"] == "s1"
    assert [a["description"] for a in entries[0]["actions"]] == ["A"]
    assert "400" in entries[0]["error"]


async def test_vanished_conversation_unlinks_and_a_new_link_flushes_the_actions(
    redis_client, clock: ManualClock
) -> None:
    product = make_product(post_link_debounce_s=0)
    with respx.mock() as mock:
        route = mock.post(NOTES_URL).mock(
            side_effect=[httpx.Response(404), httpx.Response(200, json={"id": "n2"})]
        )
        async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
            await link(h, conversation_id="gone")
            await h.post_batch("acme", batch("s1", ("A", T0)))
            assert await h.deliver() == 1
            r = await h.post_batch("acme", batch("s1", ("B", T0 + 0.5)))
            assert r.json()["linked"] is False
            await link(h, conversation_id="c2")
            assert await h.deliver() == 1
    last = json.loads(route.calls[-1].request.content)
    assert last["conversation_id"] == "c2"
    assert lines(last) == ["[1] A", "[2] B"]


async def test_a_second_instance_delivers_what_the_first_queued(
    redis_client, clock: ManualClock, bot
) -> None:
    product = make_product()
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as first:
        await first.post_batch("acme", batch("s1", ("A", T0)))
        await link(first)
        await first.post_batch("acme", batch("s1", ("B", T0 + 10)))
    assert not bot.called  # the first process stopped before delivering anything
    clock.advance(1)
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as second:
        assert await second.deliver() == 2
    assert [lines(n) for n in notes(bot)] == [["[1] A"], ["[1] B"]]


async def test_a_crashed_delivery_is_finished_after_its_lease(
    redis_client, clock: ManualClock, bot
) -> None:
    product = make_product()
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        await h.post_batch("acme", batch("s1", ("A", T0)))
        await link(h)
        # A process claims the note and dies before posting it.
        found = await h.services.store.claim_due(
            now=clock.now(), limit=10, lease_s=30, max_note_actions=1000
        )
        assert len(found.claims) == 1
        clock.advance(29)
        assert await h.deliver() == 0  # still leased
        clock.advance(2)
        assert await h.deliver() == 1
    assert lines(notes(bot)[0]) == ["[1] A"]


async def test_summary_is_posted_after_the_queued_action_notes(
    redis_client, clock: ManualClock, bot
) -> None:
    product = make_product()
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        await h.post_batch("acme", batch("s1", ("A", T0)))
        r = await h.post_batch("acme", {"type": "summary", "session_id": "s1", "summary": "Sum."})
        assert r.status_code == 202
        await link(h)
        await h.post_batch("acme", batch("s1", ("B", T0 + 5)))
        clock.advance(1)
        await h.deliver()
    sent = notes(bot)
    assert [n["kind"] for n in sent] == ["actions", "actions", "summary"]
    assert sent[2]["body"].endswith("\n\nSum.")
    assert sent[2]["body"].startswith("session_id: s1\ntimestamp: 2023-11-14 22:13:21 UTC")


async def test_retries_give_up_into_the_dead_letter_list_after_a_day(
    redis_client, clock: ManualClock
) -> None:
    product = make_product(post_link_debounce_s=0)
    dead_key = keys.dead_letter_key("acme")
    with respx.mock() as mock:
        route = mock.post(NOTES_URL).mock(return_value=httpx.Response(503))
        async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
            await link(h)
            await h.post_batch("acme", batch("s1", ("A", T0)))
            first_failure = clock.now()
            for _ in range(10):  # backing off, at most a minute apart
                assert await h.deliver() == 1
                clock.advance(61)
            clock.t = first_failure + 24 * 3600 - 1
            assert await h.deliver() == 1
            assert await redis_client.zcard(dead_key) == 0  # still retrying just before 24 h
            clock.advance(61)
            assert await h.deliver() == 1
            clock.advance(3600)
            assert await h.deliver() == 0  # given up: nothing left to retry
    assert route.call_count == 12
    (entry,) = await redis_client.zrange(dead_key, 0, -1)
    letter = json.loads(entry)
    assert letter["attempts"] == 12
    assert letter["first_failure_at"] == first_failure
    assert letter["failed_at"] - letter["first_failure_at"] >= 24 * 3600
    assert [a["description"] for a in letter["actions"]] == ["A"]
