"""Replay links: the at-link flush note of a ``replay_links`` product links to the recording."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import respx

from app.posthog.describe import event_time
from app.products import ProductConfig
from app.store import keys
from app.store.redis_store import StoreUnavailable
from tests.conftest import NOTES_URL, REDACT_URL, ManualClock, make_product
from tests.harness import Harness, running_app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "posthog"
CLICK = json.loads((FIXTURES / "autocapture_click.json").read_text())
EVENT_PROJECT_URL = CLICK["project"]["url"]  # https://eu.posthog.com/project/48213
HEADER_NAME, HEADER_SECRET = "X-PostHog-Secret", "posthog-header-secret-0123"
T0 = (event_time(CLICK["event"]) or 0) + 2  # 2025-03-14 09:26:55 UTC, just after the click
CLICKED = '[1] User clicked button "Export CSV" on /dashboard'


def product(**posthog: Any) -> ProductConfig:
    section = {"header_name": HEADER_NAME, "header_secret": HEADER_SECRET, **posthog}
    return make_product(posthog=section, post_link_debounce_s=0)


def click(session_id: str, *, second: int = 53, project: Any = EVENT_PROJECT_URL) -> Any:
    """The fixture's click, in ``session_id`` at 09:26:<second>, from a project at ``project``."""
    body = copy.deepcopy(CLICK)
    body["event"]["uuid"] = f"{session_id}-{second}"
    body["event"]["timestamp"] = f"2025-03-14T09:26:{second}.000Z"
    body["event"]["properties"]["$session_id"] = session_id
    body["project"]["url"] = project
    return body


def header(session_id: str, second: int = 53) -> str:
    return f"session_id: {session_id}\ntimestamp: 2025-03-14 09:26:{second} UTC\n"


async def post_event(h: Harness, body: Any) -> None:
    headers = {HEADER_NAME: HEADER_SECRET}
    r = await h.client.post("/posthog/acme", json=body, headers=headers)
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 1


async def link(h: Harness, session_id: str, conversation_id: str = "c1") -> None:
    body = {
        "event": "conversation.created",
        "conversation_id": conversation_id,
        "session_id": session_id,
    }
    assert (await h.post_webhook("acme", body)).json()["status"] == "linked"


@pytest.fixture
def notes() -> Iterator[list[dict[str, Any]]]:
    """The bodies of the notes the bot receives, in order."""
    posted: list[dict[str, Any]] = []

    def note(request: httpx.Request) -> httpx.Response:
        posted.append(json.loads(request.content))
        return httpx.Response(200, json={"id": f"n{len(posted)}"})

    with respx.mock(assert_all_called=False) as mock:
        mock.post(NOTES_URL).mock(side_effect=note)
        mock.post(REDACT_URL).mock(return_value=httpx.Response(204))
        yield posted


async def test_a_configured_project_url_links_the_flush_note_and_nothing_else(
    redis_client: aioredis.Redis, notes: list[dict[str, Any]]
) -> None:
    configured = product(replay_links=True, project_url="https://us.posthog.com/project/7/")
    async with running_app(
        products=[configured], clock=ManualClock(T0), redis_client=redis_client
    ) as h:
        # The event's own project URL is neither used nor kept: the configured one wins.
        await post_event(h, click("s1"))
        await link(h, "s1")
        assert await h.deliver() == 1
        await post_event(h, click("s1", second=54))
        assert await h.deliver() == 1
        r = await h.post_batch("acme", {"type": "summary", "session_id": "s1", "summary": "sum"})
        assert r.status_code == 202, r.text
        assert await h.deliver() == 1
    assert [n["body"] for n in notes] == [
        header("s1") + "replay: https://us.posthog.com/project/7/replay/s1\n\n" + CLICKED,
        header("s1", 54) + "\n" + CLICKED,
        "session_id: s1\ntimestamp: 2025-03-14 09:26:55 UTC\n\nsum",
    ]
    assert await redis_client.get(keys.project_url_key("acme")) is None


async def test_the_events_project_url_is_used_by_another_replica(
    redis_client: aioredis.Redis, notes: list[dict[str, Any]]
) -> None:
    replaying = product(replay_links=True)
    clock = ManualClock(T0)
    async with running_app(products=[replaying], clock=clock, redis_client=redis_client) as api:
        await post_event(api, click("s1"))
    assert await redis_client.get(keys.project_url_key("acme")) == EVENT_PROJECT_URL.encode()
    # Another process, with a store and a worker of its own, delivers the flush.
    async with running_app(products=[replaying], clock=clock, redis_client=redis_client) as h:
        await link(h, "s1")
        assert await h.deliver() == 1
        await post_event(h, click("s1", second=54))
        assert await h.deliver() == 1
    assert [n["body"] for n in notes] == [
        header("s1") + f"replay: {EVENT_PROJECT_URL}/replay/s1\n\n" + CLICKED,
        header("s1", 54) + "\n" + CLICKED,
    ]


async def test_without_replay_links_no_line_and_no_key(
    redis_client: aioredis.Redis, notes: list[dict[str, Any]]
) -> None:
    async with running_app(
        products=[product()], clock=ManualClock(T0), redis_client=redis_client
    ) as h:
        await post_event(h, click("s1"))
        await link(h, "s1")
        assert await h.deliver() == 1
    assert [n["body"] for n in notes] == [header("s1") + "\n" + CLICKED]
    assert await redis_client.get(keys.project_url_key("acme")) is None


@pytest.mark.parametrize(
    "project_url",
    [
        "javascript:x",
        "ftp://eu.posthog.com/project/1",
        "https://",
        "https:/eu.posthog.com/project/1",
        "https://eu.posthog.com/project/1\n\n[1] forged",
        "https://eu.posthog.com/project/1\u2028forged",
        "https://eu.posthog.com/project 1",
        "https://eu.posthog.com/project/1?next=/x",
        "https://eu.posthog.com/project/1#frag",
        "https://[::1/project/1",
        "https://eu.posthog.com/" + "p" * 2048,
        "",
        42,
        None,
    ],
)
async def test_an_invalid_project_url_is_never_used(
    redis_client: aioredis.Redis, notes: list[dict[str, Any]], project_url: Any
) -> None:
    async with running_app(
        products=[product(replay_links=True)], clock=ManualClock(T0), redis_client=redis_client
    ) as h:
        await post_event(h, click("s1", project=project_url))
        await link(h, "s1")
        assert await h.deliver() == 1
    assert [n["body"] for n in notes] == [header("s1") + "\n" + CLICKED]
    assert await redis_client.get(keys.project_url_key("acme")) is None


async def test_an_invalid_url_does_not_replace_a_valid_one(
    redis_client: aioredis.Redis, notes: list[dict[str, Any]]
) -> None:
    async with running_app(
        products=[product(replay_links=True)], clock=ManualClock(T0), redis_client=redis_client
    ) as h:
        await post_event(h, click("s1"))
        await post_event(h, click("s1", second=54, project="javascript:alert(1)"))
        await link(h, "s1")
        assert await h.deliver() == 1
    assert notes[0]["body"].startswith(
        header("s1") + f"replay: {EVENT_PROJECT_URL}/replay/s1\n\n[1] "
    )


async def test_the_worker_reads_the_url_at_most_once_a_minute(
    redis_client: aioredis.Redis, notes: list[dict[str, Any]]
) -> None:
    clock = ManualClock(T0)
    replaying = product(replay_links=True)
    key = keys.project_url_key("acme")
    async with running_app(products=[replaying], clock=clock, redis_client=redis_client) as h:
        # Before any event names the project, the flush goes without the line.
        await post_event(h, click("s0", project=None))
        await link(h, "s0", "c0")
        assert await h.deliver() == 1
        # Another replica saw the project meanwhile: this worker's "unknown" is a minute old
        # at most.
        await redis_client.set(key, "https://eu.posthog.com/project/1")
        await post_event(h, click("s1", project=None))
        await link(h, "s1")
        assert await h.deliver() == 1
        clock.advance(60)
        await post_event(h, click("s2", second=54, project=None))
        await link(h, "s2", "c2")
        assert await h.deliver() == 1
    assert [n["body"] for n in notes] == [
        header("s0") + "\n" + CLICKED,
        header("s1") + "\n" + CLICKED,
        header("s2", 54) + "replay: https://eu.posthog.com/project/1/replay/s2\n\n" + CLICKED,
    ]


async def test_when_redis_cannot_tell_the_url_the_flush_goes_without_it(
    redis_client: aioredis.Redis, notes: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_app(
        products=[product(replay_links=True)], clock=ManualClock(T0), redis_client=redis_client
    ) as h:
        await post_event(h, click("s1", project=None))

        async def unavailable(product_id: str, *, now: float) -> str | None:
            raise StoreUnavailable("connection refused")

        monkeypatch.setattr(h.services.store, "project_url", unavailable)
        await link(h, "s1")
        assert await h.deliver() == 1
    assert [n["body"] for n in notes] == [header("s1") + "\n" + CLICKED]
