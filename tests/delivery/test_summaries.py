"""Summaries: a summary goes out after the queued action notes, then replaces them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx
from prometheus_client import REGISTRY

from app.store import keys
from tests.conftest import (
    HTTP_SECRET,
    NOTES_URL,
    REDACT_URL,
    WEBHOOK_SECRET,
    ManualClock,
    batch,
    make_product,
)
from tests.harness import Harness, running_app

T0 = 1_705_322_090.0


class FakeBot:
    """respx routes that number the notes and record every call in order."""

    def __init__(self, mock: respx.MockRouter) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail_notes: list[int] = []
        self.fail_redactions = False
        mock.post(NOTES_URL).mock(side_effect=self._note)
        mock.post(REDACT_URL).mock(side_effect=self._redact)

    def _note(self, request: httpx.Request) -> httpx.Response:
        if self.fail_notes:
            return httpx.Response(self.fail_notes.pop(0))
        body = json.loads(request.content)
        self.calls.append(("note", body))
        return httpx.Response(200, json={"id": f"n{len(self.notes)}"})

    def _redact(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(("redact", json.loads(request.content)))
        return httpx.Response(500 if self.fail_redactions else 204)

    @property
    def notes(self) -> list[dict[str, Any]]:
        return [body for kind, body in self.calls if kind == "note"]

    def sequence(self) -> list[str]:
        return [
            f"{body['kind']}" if kind == "note" else f"redact:{body['note_id']}"
            for kind, body in self.calls
        ]


@pytest.fixture
def bot() -> Iterator[FakeBot]:
    with respx.mock() as mock:
        yield FakeBot(mock)


async def link(h: Harness, conversation_id: str = "c1") -> None:
    body = {"event": "conversation.created", "conversation_id": conversation_id, "session_id": "s1"}
    assert (await h.post_webhook("acme", body)).json()["status"] == "linked"


async def summary(h: Harness, text: str) -> None:
    r = await h.post_batch("acme", {"type": "summary", "session_id": "s1", "summary": text})
    assert r.status_code == 202, r.text


async def test_summary_follows_queued_notes_then_redacts_them(
    redis_client, clock: ManualClock, bot: FakeBot
) -> None:
    product = make_product(post_link_debounce_s=0.1)
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        await h.post_batch("acme", batch("s1", ("A", T0)))
        await link(h)
        await h.deliver()  # n1: the at-link flush
        await h.post_batch("acme", batch("s1", ("B", T0 + 5)))
        await summary(h, "The user compared plans.")
        clock.advance(0.1)
        await h.deliver()  # n2: the queued action note, then n3: the summary
    assert bot.sequence() == ["actions", "actions", "summary", "redact:n1", "redact:n2"]
    assert bot.notes[2]["body"] == (
        "session_id: s1\ntimestamp: 2023-11-14 22:13:20 UTC\n\nThe user compared plans."
    )
    redactions = [body for kind, body in bot.calls if kind == "redact"]
    assert {r["conversation_id"] for r in redactions} == {"c1"}


async def test_a_second_summary_redacts_only_what_the_first_did_not(
    redis_client, clock: ManualClock, bot: FakeBot
) -> None:
    product = make_product(post_link_debounce_s=0)
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        await link(h)
        await h.post_batch("acme", batch("s1", ("A", T0)))
        await h.deliver()
        await summary(h, "first")
        await h.deliver()
        await h.post_batch("acme", batch("s1", ("B", T0 + 1)))
        await h.deliver()
        await summary(h, "second")
        await h.deliver()
    assert bot.sequence() == [
        "actions", "summary", "redact:n1", "actions", "summary", "redact:n3",
    ]  # fmt: skip


async def test_a_failed_summary_never_redacts(
    redis_client, clock: ManualClock, bot: FakeBot
) -> None:
    product = make_product(post_link_debounce_s=0)
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        await link(h)
        await h.post_batch("acme", batch("s1", ("A", T0)))
        await h.deliver()
        bot.fail_notes = [500]
        await summary(h, "sum")
        assert await h.deliver() == 1  # the summary failed: it will be retried
        assert bot.sequence() == ["actions"]
        clock.advance(1)
        assert await h.deliver() == 1
    assert bot.sequence() == ["actions", "summary", "redact:n1"]


async def test_a_summary_for_an_unlinked_session_follows_the_at_link_flush(
    redis_client, clock: ManualClock, bot: FakeBot
) -> None:
    product = make_product()
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        await h.post_batch("acme", batch("s1", ("A", T0)))
        await summary(h, "old")
        await summary(h, "latest")  # only the latest is kept
        assert await h.deliver() == 0
        await link(h)
        await h.deliver()
    assert bot.sequence() == ["actions", "summary", "redact:n1"]
    assert bot.notes[1]["body"].endswith("\n\nlatest")


async def test_failed_redactions_are_counted_not_retried(
    redis_client, clock: ManualClock, bot: FakeBot
) -> None:
    product = make_product(post_link_debounce_s=0)
    labels = {"product": "acme", "platform": "http", "result": "failed"}
    before = REGISTRY.get_sample_value("bridge_note_redactions_total", labels) or 0
    bot.fail_redactions = True
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        await link(h)
        await h.post_batch("acme", batch("s1", ("A", T0)))
        await h.deliver()
        await summary(h, "sum")
        await h.deliver()
        clock.advance(120)
        assert await h.deliver() == 0
    assert bot.sequence() == ["actions", "summary", "redact:n1"]
    assert REGISTRY.get_sample_value("bridge_note_redactions_total", labels) == before + 1


async def test_a_platform_that_cannot_redact_keeps_no_note_ids(
    redis_client, clock: ManualClock
) -> None:
    http = {"url": NOTES_URL, "signing_secret": HTTP_SECRET, "webhook_secret": WEBHOOK_SECRET}
    product = make_product(post_link_debounce_s=0, http=http)  # no redact_url
    with respx.mock(assert_all_called=False) as mock:
        bot = FakeBot(mock)
        async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
            await link(h)
            await h.post_batch("acme", batch("s1", ("A", T0)))
            await h.deliver()
            await summary(h, "The user compared plans.")
            await h.deliver()
            view = await h.services.store.session_view("acme", "s1")
    assert bot.sequence() == ["actions", "summary"]
    assert await redis_client.exists(keys.session_keys("acme", "s1").notes) == 0
    assert view is not None
    assert view["posted_notes"] == []


async def test_a_platform_that_redacts_keeps_the_ids_it_will_redact(
    redis_client, clock: ManualClock, bot: FakeBot
) -> None:
    product = make_product(post_link_debounce_s=0)  # redact_url set
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        await link(h)
        await h.post_batch("acme", batch("s1", ("A", T0)))
        await h.deliver()
        view = await h.services.store.session_view("acme", "s1")
        await summary(h, "The user compared plans.")
        await h.deliver()
    assert view is not None
    assert view["posted_notes"] == [{"kind": "actions", "conversation_id": "c1", "note_id": "n1"}]
    assert bot.sequence() == ["actions", "summary", "redact:n1"]
