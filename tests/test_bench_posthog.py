"""B8's requests (bench/posthog_intake.py) and its table rows (bench/bench.py): the pool's
signatures are the ones the bridge verifies, its events are new and PostHog-shaped (no wrk
runs here; one test posts a few of them to the app in-process)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from app.models import is_session_id
from app.posthog.describe import describe, event_time, session_id
from app.products import ProductConfig, load_products
from app.security import SignatureError, verify_standard_webhook
from bench import bench, infra, posthog_intake
from bench.posthog_intake import SignedRequest, signed_requests, visitors
from tests.conftest import ManualClock
from tests.harness import Harness, running_app

NOW = 1_796_000_000.0


@pytest.fixture(scope="module")
def b8_product(tmp_path_factory: pytest.TempPathFactory) -> ProductConfig:
    """The b8 product of the products file the bench writes."""
    workdir = tmp_path_factory.mktemp("bench")
    path = infra.write_products(workdir, bot_url="http://127.0.0.1:9/notes", debounce_s=0.15)
    return load_products(path)["b8"]


def key_of(product: ProductConfig) -> bytes:
    assert product.posthog is not None and product.posthog.webhook_key is not None
    return product.posthog.webhook_key


def pool(count: int, *, people: int = 5, now: float = NOW) -> list[SignedRequest]:
    return list(signed_requests(infra.POSTHOG_SECRET, visitors("r1", people), count, now=now))


# -- signatures -------------------------------------------------------------------------------


def test_the_bench_signs_with_the_key_of_b8s_webhook_secret(b8_product: ProductConfig) -> None:
    assert posthog_intake.whsec_key(infra.POSTHOG_SECRET) == key_of(b8_product)


def test_every_request_passes_the_bridges_verification(b8_product: ProductConfig) -> None:
    for request in pool(50):
        msg_id = verify_standard_webhook(
            request.headers(), key=key_of(b8_product), body=request.body, now=NOW
        )
        assert msg_id == request.msg_id


def test_the_signatures_stay_valid_for_the_longest_run_and_no_longer(
    b8_product: ProductConfig,
) -> None:
    (request,) = pool(1)
    key = key_of(b8_product)
    later = NOW + posthog_intake.MAX_RUN_S
    verify_standard_webhook(request.headers(), key=key, body=request.body, now=later)
    with pytest.raises(SignatureError, match="tolerance"):
        verify_standard_webhook(
            request.headers(),
            key=key,
            body=request.body,
            now=NOW + posthog_intake.SIGNATURE_TOLERANCE_S + 1,
        )


def test_a_changed_body_fails_verification(b8_product: ProductConfig) -> None:
    (request,) = pool(1)
    with pytest.raises(SignatureError, match="no webhook-signature matches"):
        verify_standard_webhook(
            request.headers(), key=key_of(b8_product), body=request.body + b" ", now=NOW
        )


def test_a_secret_that_is_not_whsec_is_refused() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        posthog_intake.whsec_key("secret_abc")


# -- the events -------------------------------------------------------------------------------


def test_every_event_uuid_and_webhook_id_is_new() -> None:
    first, second = pool(2000), pool(2000)
    events = [json.loads(r.body)["event"]["uuid"] for r in first + second]
    assert len(set(events)) == len(events) == 4000
    ids = [r.msg_id for r in first + second]
    assert len(set(ids)) == len(ids)


def test_events_are_autocapture_clicks_the_bridge_describes(b8_product: ProductConfig) -> None:
    assert b8_product.posthog is not None
    pages = set()
    for request in pool(8):
        body = json.loads(request.body)
        assert set(body) == {"event", "person"}
        event = body["event"]
        assert b8_product.posthog.keeps(event["event"])
        assert event["event"] == "$autocapture" and event["elements_chain"]
        sid = session_id(event)
        assert sid is not None and is_session_id(sid)
        described = describe(event)
        assert described.type == "click"
        assert described.description.startswith("User clicked ")
        assert '"' in described.description  # the element's text or label was read
        pages.add(described.page)
        assert body["person"]["properties"]["email"].endswith("@acme.example")
    assert len(pages) == len(posthog_intake.CLICKS)


def test_sessions_are_visited_round_robin() -> None:
    people = visitors("r1", 7)
    assert len({p.session_id for p in people}) == 7
    assert visitors("r1", 7) == people and visitors("r2", 7) != people
    sessions = Counter(
        json.loads(r.body)["event"]["properties"]["$session_id"] for r in pool(70, people=7)
    )
    assert sorted(sessions) == sorted(p.session_id for p in people)
    assert set(sessions.values()) == {10}


def test_event_times_step_up_to_the_signing_time() -> None:
    requests = pool(100)
    times = [event_time(json.loads(r.body)["event"]) or 0.0 for r in requests]
    assert times == sorted(times)
    assert times[0] >= NOW - 1 and times[-1] <= NOW
    assert {r.timestamp for r in requests} == {int(NOW)}


# -- the pool file ----------------------------------------------------------------------------


def test_a_pool_line_holds_the_four_fields(tmp_path: Path) -> None:
    requests = pool(3)
    path = tmp_path / "b8.pool"
    assert posthog_intake.write_pool(path, requests) == 3
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4
    for line, request in zip(lines, requests, strict=False):
        msg_id, stamp, signature, body = line.split(b"\t")
        assert (msg_id.decode(), int(stamp), signature.decode(), body) == (
            request.msg_id,
            request.timestamp,
            request.signature,
            request.body,
        )


def test_a_body_with_a_tab_or_newline_is_refused() -> None:
    with pytest.raises(ValueError, match="tab or newline"):
        SignedRequest("msg_1", int(NOW), "v1,x", b'{"a":\n1}').line()


def test_the_pool_covers_the_run_with_a_margin() -> None:
    size = posthog_intake.pool_size(1000, 10, connections=32, threads=1)
    assert size == 1000 * 10 * posthog_intake.POOL_MARGIN + 32 + 1


def test_a_run_longer_than_its_signatures_is_refused(tmp_path: Path) -> None:
    load = posthog_intake.PosthogLoad("http://127.0.0.1:9", "b8", infra.POSTHOG_SECRET, (), 1, 1)
    with pytest.raises(ValueError, match="signatures expire"):
        posthog_intake.measure(
            load,
            warmup_s=1,
            seconds=posthog_intake.MAX_RUN_S + 1,
            expected_rate_per_s=100,
            workdir=tmp_path,
            cpu=dict,
        )


# -- through the app --------------------------------------------------------------------------


@pytest.fixture
async def h(redis_client: aioredis.Redis, b8_product: ProductConfig) -> AsyncIterator[Harness]:
    async with running_app(
        products=[b8_product], clock=ManualClock(NOW + 5), redis_client=redis_client
    ) as harness:
        yield harness


async def test_the_app_accepts_each_event_once(h: Harness) -> None:
    requests = pool(12, people=3)
    for request in requests:
        r = await h.client.post("/posthog/b8", content=request.body, headers=request.headers())
        assert r.status_code == 202, r.text
        assert (r.json()["accepted"], r.json()["duplicates"]) == (1, 0)
    again = requests[0]
    r = await h.client.post("/posthog/b8", content=again.body, headers=again.headers())
    assert (r.status_code, r.json()["accepted"], r.json()["duplicates"]) == (202, 0, 1)


# -- the table and the options ----------------------------------------------------------------


def b8_result(**service: Any) -> dict[str, Any]:
    figures = {
        "requests_per_s": 2000.0,
        "connections": 32,
        "errors": 0,
        "warmup_errors": 0,
        "events_answered_202": 25_000,
        "events_accepted": 25_032,
        "duplicate_events": 0,
        "ignored_events": 0,
        "requests_repeated": 0,
        "warmup_requests_repeated": 0,
        "cpu": {
            "server": {"cpu_ms_per_request": 0.5, "cores_busy": 1.0},
            "wrk": {"cpu_ms_per_request": 0.05, "cores_busy": 0.1},
        },
        **service,
    }
    baseline = {"requests_per_s": 3200.0, "cpu": {"server": {"cpu_ms_per_request": 0.3}}}
    return {
        "baseline": baseline,
        "service": figures,
        "ratio": 0.625,
        "cpu_ms_per_event": 0.5,
        "b1_cpu_ms_per_batch": 0.8,
    }


B1 = {"service": {"cpu": {"wrk": {"cores_busy": 0.12}}}}


def test_b8_rows_are_for_information_against_b1() -> None:
    rows = bench.b8_rows(b8_result(), B1)
    assert [(r["id"], r["target"], r["met"]) for r in rows] == [("B8", "info", None)] * 3
    events, cpu, wrk = rows
    assert (events["baseline"], events["measured"], events["ratio"]) == (
        "3200 req/s bare",
        "2000 events/s",
        "0.62",
    )
    assert (cpu["baseline"], cpu["measured"], cpu["ratio"]) == (
        "0.800 ms per B1 batch",
        "0.500 ms",
        "0.62",
    )
    assert (wrk["baseline"], wrk["measured"], wrk["ratio"]) == (
        "1.00 cores service",
        "0.10 cores",
        "0.10",
    )
    assert "B1: 0.12" in wrk["what"]


def test_without_b1_the_cpu_row_compares_with_the_bare_endpoint() -> None:
    _, cpu, wrk = bench.b8_rows({**b8_result(), "b1_cpu_ms_per_batch": None}, None)
    assert (cpu["baseline"], cpu["ratio"]) == ("0.300 ms bare endpoint", "1.67")
    assert "B1" not in wrk["what"]


def test_b8_rows_name_what_spoils_the_figure() -> None:
    spoiled = b8_result(errors=2, events_accepted=24_990, duplicate_events=3, requests_repeated=4)
    measured = bench.b8_rows(spoiled, B1)[0]["measured"]
    assert measured == (
        "2000 events/s, 2 errors, 10 not accepted, 3 duplicates, 4 requests repeated"
    )


def test_the_table_of_an_only_b8_run_is_b8s_rows() -> None:
    assert [r["id"] for r in bench.table({"b8": b8_result()})] == ["B8"] * 3


def test_the_b8_options() -> None:
    args = bench.parse_args([])
    assert (args.b8_duration, args.b8_sessions, args.only) == (10.0, 1000, None)
    assert bench.parse_args(["--only", "b8"]).only == "b8"
    assert bench.parse_args(["--quick"]).b8_duration == 3.0
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "b2"])
