"""``POST /posthog/{product_id}``: PostHog's own events become actions of their sessions."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import respx
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from app.posthog.describe import event_time
from app.products import load_products
from app.security import decode_whsec, standard_webhook_headers
from app.store import keys
from app.store.redis_store import StoreUnavailable
from tests.conftest import INGEST_TOKEN, NOTES_URL, ManualClock, make_product
from tests.harness import Harness, running_app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "posthog"
CLICK = json.loads((FIXTURES / "autocapture_click.json").read_text())
PAGEVIEW = json.loads((FIXTURES / "pageview.json").read_text())
CLICK_SESSION = CLICK["event"]["properties"]["$session_id"]
PAGEVIEW_SESSION = PAGEVIEW["event"]["properties"]["$session_id"]
POSTHOG_SECRET = "whsec_" + base64.b64encode(b"h" * 32).decode()
ADMIN_TOKEN = "posthog-admin-token-0123"
HEADER_NAME, HEADER_SECRET = "X-PostHog-Secret", "posthog-header-secret-0123"
# A few seconds after the click: the pre-link window keeps it.
T0 = (event_time(CLICK["event"]) or 0) + 2


def posthog_product(product_id: str = "acme", **posthog: Any) -> Any:
    section = {"webhook_secret": POSTHOG_SECRET, **posthog}
    return make_product(product_id, posthog=section, post_link_debounce_s=0)


def sign(
    body: bytes, now: float, *, secret: str = POSTHOG_SECRET, msg_id: str = "msg_1"
) -> dict[str, str]:
    """The headers PostHog's destination sends with a signing secret."""
    headers = standard_webhook_headers(
        decode_whsec(secret), msg_id=msg_id, timestamp=int(now), body=body
    )
    return {**headers, "content-type": "application/json"}


def event(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of a fixture with ``changes`` to its event (``properties`` merged)."""
    document = copy.deepcopy(base)
    properties = changes.pop("properties", {})
    document["event"].update(changes)
    document["event"]["properties"].update(properties)
    return document


@pytest.fixture
def notes() -> Iterator[list[dict[str, Any]]]:
    posted: list[dict[str, Any]] = []

    def note(request: httpx.Request) -> httpx.Response:
        posted.append(json.loads(request.content))
        return httpx.Response(200, json={"id": f"n{len(posted)}"})

    with respx.mock(assert_all_called=False) as mock:
        mock.post(NOTES_URL).mock(side_effect=note)
        yield posted


@pytest.fixture
async def h(redis_client: aioredis.Redis) -> AsyncIterator[Harness]:
    products = [
        posthog_product(),
        posthog_product(
            "hdr", webhook_secret=None, header_name=HEADER_NAME, header_secret=HEADER_SECRET
        ),
        posthog_product("both", header_name=HEADER_NAME, header_secret=HEADER_SECRET),
        posthog_product("all", events=["*"]),
        posthog_product("replay", replay_links=True),
        posthog_product("configured", replay_links=True, project_url="https://eu.posthog.com/p/1"),
        make_product("plain"),
    ]
    clock = ManualClock(T0)
    async with running_app(
        products=products, clock=clock, redis_client=redis_client, admin_token=ADMIN_TOKEN
    ) as harness:
        yield harness


async def post(
    h: Harness,
    body: Any,
    *,
    product_id: str = "acme",
    headers: dict[str, str] | None = None,
    msg_id: str = "msg_1",
) -> httpx.Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = sign(raw, h.clock.now(), msg_id=msg_id) if headers is None else headers
    return await h.client.post(f"/posthog/{product_id}", content=raw, headers=sent)


async def pending(h: Harness, session_id: str, product_id: str = "acme") -> int:
    r = await h.client.get(
        f"/sessions/{product_id}/{session_id}", headers={"authorization": f"Bearer {INGEST_TOKEN}"}
    )
    if r.status_code == 404:
        return 0
    assert r.status_code == 200, r.text
    count: int = r.json()["pending_actions"] + r.json()["queued_actions"]
    return count


def counted(product_id: str, result: str) -> float:
    labels = {"product": product_id, "result": result}
    return REGISTRY.get_sample_value("bridge_posthog_events_total", labels) or 0


async def link(h: Harness, session_id: str, conversation_id: str = "c1") -> None:
    body = {
        "event": "conversation.created",
        "conversation_id": conversation_id,
        "session_id": session_id,
    }
    assert (await h.post_webhook("acme", body)).json()["status"] == "linked"


# --- accepted ----------------------------------------------------------------------------------


async def test_a_signed_event_becomes_a_line_of_the_sessions_note(
    h: Harness, notes: list[dict[str, Any]]
) -> None:
    before = counted("acme", "accepted")
    r = await post(h, CLICK)
    assert r.status_code == 202, r.text
    assert r.json() == {"status": "accepted", "accepted": 1, "duplicates": 0, "ignored": 0}
    assert counted("acme", "accepted") == before + 1
    await link(h, CLICK_SESSION)
    await h.deliver()
    assert [n["body"] for n in notes] == [
        f"session_id: {CLICK_SESSION}\ntimestamp: 2025-03-14 09:26:53 UTC\n\n"
        '[1] User clicked button "Export CSV" on /dashboard'
    ]
    assert notes[0]["conversation_id"] == "c1"


async def test_the_action_carries_the_url_type_and_identity(h: Harness) -> None:
    assert (await post(h, CLICK)).status_code == 202
    r = await h.client.get(
        f"/sessions/acme/{CLICK_SESSION}", headers={"authorization": f"Bearer {INGEST_TOKEN}"}
    )
    assert r.json()["metadata"] == {
        "user_id": CLICK["event"]["distinct_id"],
        "email": "ada@example.com",
    }
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    r = await h.client.get(f"/debug/sessions/acme/{CLICK_SESSION}", headers=admin)
    [action] = r.json()["pre_link_buffer"]
    url = "https://app.example.com/dashboard?range=30d"
    assert (action["type"], action["canonical_url"], action["raw_url"]) == ("click", url, url)
    assert action["timestamp_start"] == pytest.approx(1741944413.589)


async def test_blank_identity_fields_are_absent_as_in_the_description(h: Harness) -> None:
    """A whitespace-only distinct id or email names nobody (the describer reads every text
    field the same way); one uuid of spaces is no uuid."""
    body = event(CLICK, distinct_id="   ", uuid=" ")
    body["person"]["properties"]["email"] = "\t"
    assert (await post(h, body)).status_code == 202
    r = await h.client.get(
        f"/sessions/acme/{CLICK_SESSION}", headers={"authorization": f"Bearer {INGEST_TOKEN}"}
    )
    assert r.json()["metadata"] == {"user_id": None, "email": None}


async def test_an_event_without_a_timestamp_takes_the_receive_time(h: Harness) -> None:
    body = event(CLICK, timestamp="yesterday")
    assert (await post(h, body)).status_code == 202
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    r = await h.client.get(f"/debug/sessions/acme/{CLICK_SESSION}", headers=admin)
    assert r.json()["pre_link_buffer"][0]["timestamp_start"] == T0


async def test_a_redelivered_event_is_a_duplicate(h: Harness) -> None:
    assert (await post(h, CLICK, msg_id="msg_1")).json()["accepted"] == 1
    before = counted("acme", "duplicate")
    # PostHog retries with a new webhook-id: the event's uuid still identifies it.
    r = await post(h, CLICK, msg_id="msg_2")
    assert r.status_code == 202, r.text
    assert r.json() == {"status": "accepted", "accepted": 0, "duplicates": 1, "ignored": 0}
    assert counted("acme", "duplicate") == before + 1
    assert await pending(h, CLICK_SESSION) == 1


async def test_another_uuid_is_another_action(h: Harness) -> None:
    assert (await post(h, CLICK, msg_id="msg_1")).json()["accepted"] == 1
    # The same click a little later (an identical action is a duplicate in the store anyway).
    later = "2025-03-14T09:26:54.000Z"
    again = event(CLICK, uuid="0195937c-4e2a-7d61-b8f3-000000000000", timestamp=later)
    assert (await post(h, again, msg_id="msg_2")).json()["accepted"] == 1
    assert await pending(h, CLICK_SESSION) == 2


async def test_an_event_without_uuid_is_deduplicated_by_its_request(h: Harness) -> None:
    body = event(CLICK)
    del body["event"]["uuid"]
    assert (await post(h, body, msg_id="msg_1")).json()["accepted"] == 1
    assert (await post(h, body, msg_id="msg_1")).json()["duplicates"] == 1
    later = event(body, timestamp="2025-03-14T09:26:54.000Z")
    assert (await post(h, later, msg_id="msg_2")).json()["accepted"] == 1
    assert await pending(h, CLICK_SESSION) == 2


async def test_an_array_of_events_for_two_sessions(h: Harness, notes: list[dict[str, Any]]) -> None:
    pageview = event(PAGEVIEW, timestamp=CLICK["event"]["timestamp"])
    r = await post(h, [CLICK, pageview])
    assert r.json() == {"status": "accepted", "accepted": 2, "duplicates": 0, "ignored": 0}
    assert await pending(h, CLICK_SESSION) == 1
    assert await pending(h, PAGEVIEW_SESSION) == 1
    await link(h, PAGEVIEW_SESSION, "c2")
    await h.deliver()
    assert [n["conversation_id"] for n in notes] == ["c2"]
    assert notes[0]["body"].endswith("[1] User viewed /pricing")


# --- ignored -----------------------------------------------------------------------------------


async def test_an_event_outside_the_filter_is_ignored(h: Harness) -> None:
    custom = event(CLICK, event="invoice_exported")
    before = counted("acme", "ignored_event")
    r = await post(h, custom)
    assert r.status_code == 202, r.text
    assert r.json() == {"status": "accepted", "accepted": 0, "duplicates": 0, "ignored": 1}
    assert counted("acme", "ignored_event") == before + 1
    assert await pending(h, CLICK_SESSION) == 0


async def test_a_star_keeps_every_event(h: Harness) -> None:
    custom = event(CLICK, event="invoice_exported")
    assert (await post(h, custom, product_id="all")).json()["accepted"] == 1
    assert await pending(h, CLICK_SESSION, "all") == 1


@pytest.mark.parametrize("session_id", [None, "", "not a session id", 42])
async def test_an_event_without_a_session_is_ignored(h: Harness, session_id: Any) -> None:
    body = event(CLICK, properties={"$session_id": session_id})
    before = counted("acme", "no_session")
    r = await post(h, [body, PAGEVIEW])
    assert r.json() == {"status": "accepted", "accepted": 1, "duplicates": 0, "ignored": 1}
    assert counted("acme", "no_session") == before + 1


# --- verification ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"webhook-id": "msg_1", "webhook-timestamp": "0", "webhook-signature": "v1,AAAA"},
        "wrong secret",
        "stale",
        "other body",
    ],
)
async def test_a_bad_signature_is_refused_and_nothing_is_stored(h: Harness, headers: Any) -> None:
    raw = json.dumps(CLICK).encode()
    if headers == "wrong secret":
        headers = sign(raw, h.clock.now(), secret="whsec_" + base64.b64encode(b"x" * 32).decode())
    elif headers == "stale":
        headers = sign(raw, h.clock.now() - 301)
    elif headers == "other body":
        headers = sign(json.dumps(PAGEVIEW).encode(), h.clock.now())
    r = await post(h, raw, headers={**headers, "content-type": "application/json"})
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "unauthorized"
    assert await pending(h, CLICK_SESSION) == 0


async def test_the_static_header(h: Harness) -> None:
    right = {HEADER_NAME: HEADER_SECRET, "content-type": "application/json"}
    wrong = {HEADER_NAME: HEADER_SECRET + "x", "content-type": "application/json"}
    r = await post(h, CLICK, product_id="hdr", headers=wrong)
    assert r.status_code == 401, r.text
    assert await pending(h, CLICK_SESSION, "hdr") == 0
    # A signature means nothing to a product without webhook_secret.
    r = await post(h, CLICK, product_id="hdr")
    assert r.status_code == 401, r.text
    r = await post(h, CLICK, product_id="hdr", headers=right)
    assert r.json()["accepted"] == 1
    # The header names no request: a retry is recognised by the event's uuid.
    r = await post(h, CLICK, product_id="hdr", headers=right)
    assert r.json()["duplicates"] == 1


async def test_with_both_methods_either_is_accepted(h: Harness) -> None:
    header = {HEADER_NAME: HEADER_SECRET, "content-type": "application/json"}
    assert (await post(h, CLICK, product_id="both", headers=header)).status_code == 202
    assert (await post(h, PAGEVIEW, product_id="both")).status_code == 202
    wrong = {HEADER_NAME: "nope", "content-type": "application/json"}
    assert (await post(h, CLICK, product_id="both", headers=wrong)).status_code == 401


# --- refusals ----------------------------------------------------------------------------------


async def test_an_unknown_product_or_one_without_posthog_is_404(h: Harness) -> None:
    r = await post(h, CLICK, product_id="nope")
    assert (r.status_code, r.json()["error"]) == (404, "unknown_product")
    r = await post(h, CLICK, product_id="plain")
    assert (r.status_code, r.json()["error"]) == (404, "posthog_not_configured")
    assert "[posthog]" in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (b"not json", "body"),
        (b'{"event": ', "body"),
        (b"[]", "body"),
        (b'"text"', "body"),
        (b"42", "body"),
        (b'{"person": {}}', "event"),
        (b'{"event": "$pageview"}', "event"),
        (b'[{"event": {}}, 3]', "[1]"),
        (b'[{"event": {}}, {"event": []}]', "[1].event"),
        (b'"\\ud800"', "body"),
    ],
)
async def test_a_body_of_the_wrong_shape_is_422_with_fields(
    h: Harness, body: bytes, loc: str
) -> None:
    r = await post(h, body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_payload"
    assert [f["loc"] for f in r.json()["fields"]] == [loc]


async def test_more_than_100_events_is_422_and_stores_nothing(h: Harness) -> None:
    r = await post(h, [CLICK] * 101)
    assert r.status_code == 422, r.text
    assert r.json()["fields"] == [{"loc": "body", "message": "must hold 1 to 100 events, not 101"}]
    assert await pending(h, CLICK_SESSION) == 0
    many = [
        event(CLICK, uuid=f"u-{i}", timestamp=f"2025-03-14T09:26:53.{i:03d}Z") for i in range(100)
    ]
    assert (await post(h, many, msg_id="msg_2")).json()["accepted"] == 100


# --- the project URL, for replay links ---------------------------------------------------------

PROJECT_URL = CLICK["project"]["url"]


def from_project(base: dict[str, Any], url: Any, n: int) -> dict[str, Any]:
    """A copy of a fixture, its ``n``-th event (a uuid and a time of its own), from a project
    at ``url``."""
    document = event(base, uuid=f"u-{n}", timestamp=f"2025-03-14T09:26:5{n}.000Z")
    document["project"] = {"id": 1, "name": "Example App", "url": url}
    return document


async def test_the_project_url_is_kept_only_for_replay_links_without_a_configured_one(
    h: Harness, redis_client: aioredis.Redis
) -> None:
    for product_id in ("acme", "configured", "replay"):
        r = await post(h, CLICK, product_id=product_id)
        assert r.json()["accepted"] == 1, r.text
    assert await redis_client.get(keys.project_url_key("acme")) is None
    assert await redis_client.get(keys.project_url_key("configured")) is None
    assert await redis_client.get(keys.project_url_key("replay")) == PROJECT_URL.encode()


async def test_a_process_writes_an_unchanged_project_url_once(
    h: Harness, redis_client: aioredis.Redis
) -> None:
    key = keys.project_url_key("replay")
    assert (await post(h, CLICK, product_id="replay")).json()["accepted"] == 1
    await redis_client.delete(key)
    # The same URL again: this process wrote it already, so it costs no Redis call.
    again = from_project(CLICK, PROJECT_URL, 2)
    assert (await post(h, again, product_id="replay", msg_id="msg_2")).json()["accepted"] == 1
    assert await redis_client.get(key) is None
    moved = from_project(CLICK, "https://us.posthog.com/project/9", 3)
    assert (await post(h, moved, product_id="replay", msg_id="msg_3")).json()["accepted"] == 1
    assert await redis_client.get(key) == b"https://us.posthog.com/project/9"


async def test_the_last_valid_project_url_of_an_array_is_kept(
    h: Harness, redis_client: aioredis.Redis
) -> None:
    first = from_project(CLICK, "https://us.posthog.com/project/9", 1)
    bad = from_project(CLICK, "javascript:x", 2)
    r = await post(h, [first, PAGEVIEW, bad], product_id="replay")
    assert r.json()["accepted"] == 3, r.text
    assert (
        await redis_client.get(keys.project_url_key("replay"))
        == b"https://us.posthog.com/project/9"
    )


async def test_a_failed_project_url_write_still_accepts_the_events(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unavailable(product_id: str, url: str, *, now: float) -> None:
        raise StoreUnavailable("connection refused")

    monkeypatch.setattr(h.services.store, "save_project_url", unavailable)
    with capture_logs() as logs:
        r = await post(h, CLICK, product_id="replay")
    assert r.status_code == 202, r.text
    assert r.json() == {"status": "accepted", "accepted": 1, "duplicates": 0, "ignored": 0}
    assert await pending(h, CLICK_SESSION, "replay") == 1
    warnings = [line for line in logs if line["log_level"] == "warning"]
    assert warnings == [
        {
            "event": "posthog_project_url_not_saved",
            "error": "connection refused",
            "log_level": "warning",
        }
    ]


# --- the README's walkthrough, on the example products file ------------------------------------

EXAMPLE_FILE = Path(__file__).resolve().parents[2] / "config" / "products.example.toml"
README = Path(__file__).resolve().parents[2] / "README.md"


async def test_the_demo_product_takes_the_readmes_posthog_click(
    redis_client: aioredis.Redis,
) -> None:
    demo = load_products(EXAMPLE_FILE)["demo"]
    assert demo.posthog is not None and demo.posthog.header_secret is not None
    secret = demo.posthog.header_secret
    assert f"X-PostHog-Secret: {secret}" in README.read_text()  # the walkthrough's header
    click = event(
        CLICK,
        distinct_id="user-7",
        properties={"$session_id": "sess-ph", "$current_url": "https://app.example.com/dashboard"},
    )
    clock = ManualClock(T0)
    async with running_app(products=[demo], clock=clock, redis_client=redis_client) as h:
        headers = {"content-type": "application/json", "X-PostHog-Secret": secret}
        r = await post(h, click, product_id="demo", headers=headers)
        assert r.json() == {"status": "accepted", "accepted": 1, "duplicates": 0, "ignored": 0}
        hook = {"event": "conversation.created", "conversation_id": "conv-ph", "user_id": "user-7"}
        linked = await h.client.post("/chatbot-webhook/demo", json=hook)
        assert linked.json()["session_id"] == "sess-ph"
        with capture_logs() as logs:
            await h.deliver()
    (posted,) = [line for line in logs if line["event"] == "note_posted"]
    assert posted["body"].endswith('\n\n[1] User clicked button "Export CSV" on /dashboard')
