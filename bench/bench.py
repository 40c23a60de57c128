"""`make bench`: the performance targets of docs/performance.md, each measured against a
baseline run in the same invocation, on loopback, with every process started and stopped here.

  B1  ingest throughput (wrk): the service vs a bare FastAPI endpoint (bench/baseline_app.py)
  B2  post-link delivery latency: last batch's 202 -> note at the fake bot, vs the debounce;
      then a rate sweep (--sweep-rates) up to the first rate whose p99 exceeds 200 ms
  B3  coalescing: notes per burst of 10 batches 20 ms apart
  B5  at-link flush: link webhook sent -> flush note at the fake bot, vs one direct hop
  B4  idle linked sessions: Redis bytes per session, and B1 again at that size
  B8  PostHog intake (wrk): POST /posthog/<product>, one signed $autocapture click a request,
      in events/s against B1's bare endpoint, and the service's CPU per event against B1's
      per batch (after B4, before B2)
  B7  B1 and B2 again with the service on a 3-primary Redis Cluster, vs the standalone figures;
      then on 3 primaries + 3 replicas with BRIDGE_REDIS_WAIT_REPLICAS=1 (the cost of WAIT)

    .venv/bin/python bench/bench.py [--b4-sessions 100000] [--skip-cluster] [--quick]
        [--sweep-rates 100,250,300,400,500,600] [--sweep-duration 8] [--b8-duration 10]
    .venv/bin/python bench/bench.py --only b8    # B1's baseline and B8 alone (~40 s)

Results go to bench/results/latest.json, and the sweep's p50/p99 by rate to
bench/results/b2-latency.svg; docs/performance.md explains the method.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import uvloop

# The repository root first: `bench` is then the package (bench/__init__.py), not this file.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.products import ProductConfig, load_products
from bench import infra, latency, plot, posthog_intake, scale, throughput
from bench.chaos import log
from bench.infra import BotRecords, RedisHandle
from bench.loadgen import Sender, link_all
from tests.cluster import missing_binaries
from tests.e2e.service import Bridge

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_FILE = REPO_ROOT / "bench" / "results" / "latest.json"
PLOT_FILE = RESULTS_FILE.with_name("b2-latency.svg")
B1_TARGET = 0.8
B2_P50_TARGET_MS = 165.0
B2_P99_TARGET_MS = 200.0
DEFAULT_SWEEP_RATES = "100,250,300,400,500,600"
QUICK_SWEEP_RATES = "100,400"
B6_BATCH_TARGET_MS = 0.6
B6_NOTE_TARGET_MS = 1.0
B4_RATIO_TARGET = 0.9
B4_BYTES_TARGET = 1024
B4_RSS_GROWTH_PCT = 10.0  # "does not grow with sessions", allowing for allocator noise
B5_P99_TARGET_MS = 50.0
B7_PRIMARIES = 3
B7_WITHIN = 0.15  # the cluster's B1 and B2 within 15 % of the standalone figures


@dataclass
class Run:
    """What every benchmark step needs: options, processes, and the clock of the run."""

    args: argparse.Namespace
    workdir: Path
    redis: RedisHandle
    bot: BotRecords
    products_file: Path
    run_id: str
    start: float

    def say(self, message: str) -> None:
        log(self.start, message)

    def product(self, product_id: str) -> ProductConfig:
        return load_products(self.products_file)[product_id]

    def wrk_load(
        self, base_url: str, product_id: str, sessions: int, prefix: str
    ) -> throughput.WrkLoad:
        return throughput.WrkLoad(
            base_url=base_url,
            product_id=product_id,
            sessions=sessions,
            session_prefix=prefix,
            connections=self.args.connections,
            threads=self.args.wrk_threads,
        )

    def cpu_probe(self, server_pid: int) -> throughput.CpuProbe:
        """The server's and Redis's CPU seconds so far, for CPU per request."""

        def cpu() -> dict[str, float]:
            return {"server": infra.process_cpu_s(server_pid), **infra.redis_cpu_s(self.redis)}

        return cpu

    def wrk(self, load: throughput.WrkLoad, tag: str, *, server_pid: int) -> dict[str, Any]:
        return throughput.measure(
            load,
            warmup_s=self.args.warmup,
            seconds=self.args.duration,
            run_id=self.run_id + tag,
            cpu=self.cpu_probe(server_pid),
        )


# -- B1 ---------------------------------------------------------------------------------------


def b1_baseline(run: Run) -> dict[str, Any]:
    with infra.baseline_app(run.workdir, run.products_file) as served:
        prefix = f"b1-{run.run_id}-"
        load = run.wrk_load(served.url, "b1", run.args.b1_sessions, prefix)
        result = run.wrk(load, "base", server_pid=served.pid)
    run.say(f"B1 baseline: {result['requests_per_s']:.0f} req/s")
    return result


async def _link_sessions(base_url: str, product_id: str, session_ids: Sequence[str]) -> None:
    sender = Sender(base_url)
    try:
        await link_all(sender, product_id, session_ids)
    finally:
        await sender.aclose()


async def _link_prefix(base_url: str, product_id: str, prefix: str, count: int) -> None:
    await _link_sessions(base_url, product_id, [f"{prefix}{i}" for i in range(count)])


def b1_service(
    run: Run, service: Bridge, *, product_id: str, prefix: str, sessions: int, tag: str
) -> dict[str, Any]:
    """wrk against the service; checks every answered batch was stored (metrics delta)."""
    url = infra.base_url(service)
    received_before = infra.metric(service, "bridge_actions_received_total", product=product_id)
    load = run.wrk_load(url, product_id, sessions, prefix)
    result = run.wrk(load, tag, server_pid=service.proc.pid)
    received = infra.metric(service, "bridge_actions_received_total", product=product_id)
    duplicates = infra.metric(service, "bridge_actions_duplicate_total", product=product_id)
    # wrk counts answered requests; a request in flight when it stops may be stored unanswered.
    answered = (result["warmup_requests"] + result["requests"]) * throughput.ACTIONS_PER_BATCH
    result["actions_answered_202"] = answered
    result["actions_stored"] = int(received - received_before)
    result["duplicate_actions"] = int(duplicates)
    result["service_rss_kib"] = infra.rss_kib(service.proc.pid)
    return result


def b1(run: Run, service: Bridge, baseline: dict[str, Any]) -> dict[str, Any]:
    prefix = f"b1-{run.run_id}-"
    sessions = run.args.b1_sessions
    uvloop.run(_link_prefix(infra.base_url(service), "b1", prefix, sessions))
    run.say(f"B1: {sessions} sessions linked; wrk against the service")
    measured = b1_service(run, service, product_id="b1", prefix=prefix, sessions=sessions, tag="b1")
    ratio = measured["requests_per_s"] / baseline["requests_per_s"]
    run.say(f"B1 service: {measured['requests_per_s']:.0f} req/s, ratio {ratio:.2f}")
    return {"baseline": baseline, "service": measured, "ratio": round(ratio, 3)}


# -- B2, B3, B5 -------------------------------------------------------------------------------


async def run_b2(
    run: Run, sender: Sender, service: Bridge, *, rate: float, duration_s: float, tag: str
) -> dict[str, Any]:
    args = run.args
    plan = latency.B2Plan(args.b2_sessions, rate, duration_s, args.debounce)
    result = await latency.b2(
        sender,
        run.bot,
        run_id=run.run_id + tag,
        plan=plan,
        service_cpu=lambda: infra.process_cpu_s(service.proc.pid),
    )
    lat = result["latency_ms"]
    run.say(f"B2 at {rate:g}/s: p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms")
    drained(run)
    return result


def drained(run: Run) -> None:
    """Let a backlog one benchmark left behind finish before the next one starts."""
    left = infra.wait_drained(run.redis.client)
    if left:
        run.say(f"{left} session(s) still due after the drain timeout")


async def b2_and_info_rate(run: Run, sender: Sender, service: Bridge) -> dict[str, Any]:
    """B2 at its rate, then (unless --b2-info-rate is 0) at the info rate for half as long: what
    B7 runs on a cluster, where the standalone sweep would take too long."""
    args = run.args
    results = {
        "b2": await run_b2(
            run, sender, service, rate=args.b2_rate, duration_s=args.b2_duration, tag=""
        )
    }
    if args.b2_info_rate:
        results["b2_at_info_rate"] = await run_b2(
            run, sender, service, rate=args.b2_info_rate, duration_s=args.b2_duration / 2, tag="i"
        )
    return results


def sweep_point(b2: dict[str, Any]) -> dict[str, Any]:
    """The figures of one B2 run that the sweep keeps (and plots)."""
    lat = b2["latency_ms"]
    return {
        "rate_per_s": b2["rate_per_s"],
        "duration_s": b2["duration_s"],
        "achieved_rate_per_s": b2["achieved_rate_per_s"],
        "p50": lat.get("p50"),
        "p90": lat.get("p90"),
        "p99": lat.get("p99"),
        "service_cores_busy": b2["service_cores_busy"],
        "service_cpu_ms_per_batch": b2["service_cpu_ms_per_batch"],
        "notes": b2["notes"],
        "batches_not_delivered": b2["batches_not_delivered"],
    }


def exceeds_p99_target(point: dict[str, Any]) -> bool:
    """A run that delivered no note at all has no p99, and certainly missed the target."""
    return point["p99"] is None or point["p99"] > B2_P99_TARGET_MS


def sweep_summary(points: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The points by rate, the first rate whose p99 exceeds the target (None: none did) and the
    highest rate below it (None: the lowest rate already exceeded it)."""
    ordered = sorted(points, key=lambda p: p["rate_per_s"])
    first_over = next((p["rate_per_s"] for p in ordered if exceeds_p99_target(p)), None)
    within = [
        p["rate_per_s"] for p in ordered if first_over is None or p["rate_per_s"] < first_over
    ]
    return {
        "points": ordered,
        "first_rate_over_200ms_p99": first_over,
        "highest_rate_within": max(within, default=None),
    }


async def rate_sweep(
    rates: Sequence[float],
    measure: Callable[[float], Awaitable[dict[str, Any]]],
    *,
    already: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """B2 results from ``measure`` at each rate, ascending, stopping before any rate above one
    whose p99 exceeded the target: past that the backlog only grows. ``already``: B2 results
    measured before (the main run), which count for the stopping rule and are not run again."""
    results: list[dict[str, Any]] = []
    for rate in sorted(rates):
        known = [sweep_point(r) for r in [*already, *results]]
        if any(p["rate_per_s"] == rate for p in known):
            continue
        first_over = sweep_summary(known)["first_rate_over_200ms_p99"]
        if first_over is not None and rate > first_over:
            break
        results.append(await measure(rate))
    return results


async def b6_intake(run: Run, sender: Sender, service: Bridge) -> dict[str, Any]:
    """B2's load for half as long on b1, whose notes are not due: intake alone at that rate."""
    args = run.args
    plan = latency.B2Plan(args.b2_sessions, args.b2_rate, args.b2_duration / 2, args.debounce)
    result = await latency.intake_at_rate(
        sender,
        run_id=run.run_id,
        plan=plan,
        product_id="b1",
        service_cpu=lambda: infra.process_cpu_s(service.proc.pid),
    )
    run.say(f"B6 intake at {args.b2_rate:g}/s: {result['service_cpu_ms_per_batch']} ms per batch")
    return result


def b6_figures(results: dict[str, Any]) -> dict[str, float | None]:
    """CPU per batch (B1, saturated) and per note: B2's CPU per batch and its note, less intake
    alone at B2's rate (at 200 batches/s a batch costs more than under B1's saturation, where
    the event loop's work is shared by many requests)."""
    b1 = results["b1"]["service"]["cpu"]["server"]["cpu_ms_per_request"]
    b2 = results["b2"]["service_cpu_ms_per_batch"]
    intake = results.get("b6_intake", {}).get("service_cpu_ms_per_batch")
    notes, batches = results["b2"]["notes"], results["b2"]["batches_sent"]
    per_note = (b2 - intake) * batches / notes if intake is not None and notes else None
    return {"batch_b1": b1, "batch_at_b2_rate": intake, "note": per_note}


async def b2_and_sweep(run: Run, sender: Sender, service: Bridge) -> dict[str, Any]:
    """B2 at its rate, then the rate sweep. B2 at --b2-info-rate, which B7 compares the cluster
    with, is the sweep's run at that rate, or a run of its own (half --b2-duration, as on the
    cluster) when the sweep has none."""
    args = run.args

    async def at(rate: float) -> dict[str, Any]:
        return await run_b2(
            run, sender, service, rate=rate, duration_s=args.sweep_duration, tag=f"s{rate:g}"
        )

    main = await run_b2(
        run, sender, service, rate=args.b2_rate, duration_s=args.b2_duration, tag=""
    )
    results: dict[str, Any] = {"b2": main, "b6_intake": await b6_intake(run, sender, service)}
    swept = await rate_sweep(args.sweep_rates, at, already=[main])
    if swept:
        results["b2_sweep"] = sweep = sweep_summary(sweep_point(r) for r in [main, *swept])
        first_over = sweep["first_rate_over_200ms_p99"]
        run.say(
            f"B2 sweep: p99 first over {B2_P99_TARGET_MS:.0f} ms at {first_over:g} batches/s"
            if first_over is not None
            else f"B2 sweep: p99 within {B2_P99_TARGET_MS:.0f} ms at every rate swept"
        )
    if args.b2_info_rate:
        info = next((r for r in swept if r["rate_per_s"] == args.b2_info_rate), None)
        results["b2_at_info_rate"] = info or await run_b2(
            run, sender, service, rate=args.b2_info_rate, duration_s=args.b2_duration / 2, tag="i"
        )
    return results


async def latency_suite(run: Run, service: Bridge) -> dict[str, Any]:
    args = run.args
    sender = Sender(infra.base_url(service))
    results: dict[str, Any] = {}
    try:
        results.update(await b2_and_sweep(run, sender, service))
        b3_plan = latency.B3Plan(args.b3_sessions, args.b3_spread, 10, 0.02, args.debounce)
        results["b3"] = b3 = await latency.b3(sender, run.bot, run_id=run.run_id, plan=b3_plan)
        run.say(f"B3: notes per burst {b3['notes_per_burst']}")
        drained(run)
        results["b5"] = b5 = await latency.b5(
            sender, run.bot, run_id=run.run_id, sessions=args.b5_sessions, rate_per_s=args.b5_rate
        )
        run.say(f"B5: p50 {b5['latency_ms'].get('p50')} ms, p99 {b5['latency_ms'].get('p99')} ms")
        b5["floor"] = hop = await latency.floor(
            run.bot, run_id=run.run_id, posts=args.b5_sessions, rate_per_s=args.b5_rate
        )
        run.say(f"one-hop floor: p50 {hop['latency_ms'].get('p50')} ms")
    finally:
        await sender.aclose()
    if hop["latency_ms"].get("p99"):
        b5["ratio_p99_to_floor_p99"] = round(b5["latency_ms"]["p99"] / hop["latency_ms"]["p99"], 2)
    return results


# -- B4 ---------------------------------------------------------------------------------------


def b4(run: Run, service: Bridge, b1_result: dict[str, Any]) -> dict[str, Any]:
    sessions = run.args.b4_sessions
    prefix = f"b4-{run.run_id}-"
    run.say(f"B4: writing {sessions} idle linked sessions through the store's scripts")
    client = run.redis.client
    assert isinstance(client, redis.Redis), "B4 runs on the standalone Redis only"
    memory = scale.measure_memory(
        client, run.redis.url, run.product("b4"), prefix=prefix, sessions=sessions
    )
    run.say(f"B4: {memory['bytes_per_session']:.0f} bytes per session; B1 over all of them")
    measured = b1_service(run, service, product_id="b4", prefix=prefix, sessions=sessions, tag="b4")
    run.say(f"B4: B1 over {sessions}: {measured['requests_per_s']:.0f} req/s; 1000 again")
    # B1 over the 1000 sessions once more: the run at scale is compared with the mean of the
    # run just before it and the one just after, which cancels most of this machine's drift.
    again = b1_service(
        run, service, product_id="b1", prefix=f"b1-{run.run_id}-", sessions=1000, tag="b1again"
    )
    reference = (b1_result["service"]["requests_per_s"] + again["requests_per_s"]) / 2
    ratio = measured["requests_per_s"] / b1_result["baseline"]["requests_per_s"]
    return {
        "memory": memory,
        "b1_at_scale": measured,
        "b1_1000_sessions_again": again,
        "b1_ratio_at_scale": round(ratio, 3),
        "b1_vs_1000_sessions": round(measured["requests_per_s"] / reference, 3),
        "service_rss_kib": {
            "after_b1_1000": b1_result["service"]["service_rss_kib"],
            f"after_b1_{sessions}": measured["service_rss_kib"],
            "after_b1_1000_again": again["service_rss_kib"],
        },
        "service_rss_growth_pct": round(
            100 * (measured["service_rss_kib"] / b1_result["service"]["service_rss_kib"] - 1), 1
        ),
    }


# -- B8 ---------------------------------------------------------------------------------------

POSTHOG_RESULTS = ("accepted", "duplicate", "ignored_event", "no_session")


def _posthog_events(service: Bridge, product_id: str) -> dict[str, int]:
    """``bridge_posthog_events_total`` of a product, by what became of the events."""
    counted = infra.metric_by_label(
        service, "bridge_posthog_events_total", "result", product=product_id
    )
    return {r: int(counted.get(r, 0)) for r in POSTHOG_RESULTS}


def b8(
    run: Run, service: Bridge, baseline: dict[str, Any], b1_result: dict[str, Any] | None
) -> dict[str, Any]:
    """wrk over signed PostHog events to b8's linked sessions (notes not due during the run);
    checks every answered event was accepted, none as a duplicate (metrics delta)."""
    args = run.args
    url = infra.base_url(service)
    people = posthog_intake.visitors(run.run_id, args.b8_sessions)
    uvloop.run(_link_sessions(url, "b8", [p.session_id for p in people]))
    run.say(f"B8: {len(people)} PostHog sessions linked; wrk against /posthog/b8")
    load = posthog_intake.PosthogLoad(
        base_url=url,
        product_id="b8",
        secret=infra.POSTHOG_SECRET,
        people=tuple(people),
        connections=args.connections,
        threads=args.wrk_threads,
    )
    before = _posthog_events(service, "b8")
    measured = posthog_intake.measure(
        load,
        warmup_s=args.warmup,
        seconds=args.b8_duration,
        expected_rate_per_s=baseline["requests_per_s"],
        workdir=run.workdir,
        cpu=run.cpu_probe(service.proc.pid),
    )
    after = _posthog_events(service, "b8")
    counted = {r: after[r] - before[r] for r in POSTHOG_RESULTS}
    # As in B1: a request in flight when wrk stops may be stored unanswered.
    measured["events_answered_202"] = measured["warmup_requests"] + measured["requests"]
    measured["events_accepted"] = counted["accepted"]
    measured["duplicate_events"] = counted["duplicate"]
    measured["ignored_events"] = counted["ignored_event"] + counted["no_session"]
    measured["service_rss_kib"] = infra.rss_kib(service.proc.pid)
    ratio = measured["requests_per_s"] / baseline["requests_per_s"]
    cpu = measured["cpu"]
    run.say(
        f"B8: {measured['requests_per_s']:.0f} events/s, ratio {ratio:.2f}, "
        f"{cpu['server']['cpu_ms_per_request']} ms of service CPU per event, "
        f"wrk {cpu['wrk']['cores_busy']} cores, {measured['requests_repeated']} repeated"
    )
    b1_batch = b1_result["service"]["cpu"]["server"]["cpu_ms_per_request"] if b1_result else None
    return {
        "baseline": baseline,
        "service": measured,
        "ratio": round(ratio, 3),
        "cpu_ms_per_event": cpu["server"]["cpu_ms_per_request"],
        "b1_cpu_ms_per_batch": b1_batch,
        "cpu_per_event_vs_b1_batch": _ratio_of(cpu["server"]["cpu_ms_per_request"], b1_batch),
    }


# -- B7 ---------------------------------------------------------------------------------------


def _mean(values: Iterable[float]) -> float:
    return round(statistics.fmean(values), 3)


def _figures(
    b1_runs: list[dict[str, Any]], b2: dict[str, Any], b2_info: dict[str, Any] | None
) -> dict[str, Any]:
    """What B7 compares between two stores: B1 (the mean of its runs), B2, B2 at the info
    rate, and the service's and Redis's CPU per batch."""
    figures = {
        "b1_runs": len(b1_runs),
        "b1_requests_per_s": _mean(r["requests_per_s"] for r in b1_runs),
        "b1_service_cpu_ms_per_batch": _mean(
            r["cpu"]["server"]["cpu_ms_per_request"] for r in b1_runs
        ),
        "b1_redis_cpu_ms_per_batch": _mean(
            r["cpu"]["redis"]["cpu_ms_per_request"] for r in b1_runs
        ),
        "b2_rate_per_s": b2["rate_per_s"],
        "b2_latency_ms": b2["latency_ms"],
        "b2_batches_not_delivered": b2["batches_not_delivered"],
        "b2_service_cpu_ms_per_batch": b2["service_cpu_ms_per_batch"],
    }
    if b2_info:
        figures["b2_info_rate_per_s"] = b2_info["rate_per_s"]
        figures["b2_info_latency_ms"] = b2_info["latency_ms"]
        figures["b2_info_batches_not_delivered"] = b2_info["batches_not_delivered"]
    return figures


def b7_standalone(results: dict[str, Any]) -> dict[str, Any]:
    """The standalone figures, from the runs just made: B1 over 1000 sessions is the mean of B1
    and of B4's B1 again when B4 ran (this machine drifts between runs)."""
    runs = [results["b1"]["service"]]
    if "b4" in results:
        runs.append(results["b4"]["b1_1000_sessions_again"])
    return _figures(runs, results["b2"], results.get("b2_at_info_rate"))


def cluster_figures(result: dict[str, Any]) -> dict[str, Any]:
    return _figures([result["b1"]], result["b2"], result.get("b2_at_info_rate"))


def _ratio_of(value: float | None, reference: float | None) -> float | None:
    return round(value / reference, 3) if value and reference else None


def _ratios(measured: dict[str, Any], reference: dict[str, Any]) -> dict[str, float | None]:
    """Each figure of ``measured`` over the same of ``reference`` (None where one is missing)."""
    out = {
        key: _ratio_of(measured[key], reference[key])
        for key in (
            "b1_requests_per_s",
            "b1_service_cpu_ms_per_batch",
            "b1_redis_cpu_ms_per_batch",
            "b2_service_cpu_ms_per_batch",
        )
    }
    for run in ("b2", "b2_info"):
        lat, ref = measured.get(f"{run}_latency_ms", {}), reference.get(f"{run}_latency_ms", {})
        for p in (50, 99):
            out[f"{run}_p{p}"] = _ratio_of(lat.get(f"p{p}"), ref.get(f"p{p}"))
    return out


async def _b2_runs(run: Run, service: Bridge) -> dict[str, Any]:
    """B2, then B2 at the info rate (not the sweep), with a sender of their own."""
    sender = Sender(infra.base_url(service))
    try:
        return await b2_and_info_rate(run, sender, service)
    finally:
        await sender.aclose()


def _service_errors(service: Bridge) -> dict[str, Any]:
    """What the service answered >= 400, by status, and its failed note posts, by error."""
    statuses = infra.metric_by_label(
        service, "bridge_http_request_duration_seconds_count", "status"
    )
    failures = infra.metric_by_label(service, "bridge_note_failures_total", "error")
    return {
        "http_status_ge_400": {k: int(v) for k, v in sorted(statuses.items()) if int(k) >= 400},
        "note_failures": {k: int(v) for k, v in sorted(failures.items()) if v},
    }


def on_cluster(
    run: Run, *, replicas: int, wait_replicas: int, b1_s: float, b2_s: float, tag: str
) -> dict[str, Any]:
    """A fresh cluster, a service on it, then B1 and B2 exactly as on the standalone Redis
    (the same products, fake bot, load and checks), for ``b1_s`` and ``b2_s`` seconds."""
    args = argparse.Namespace(**{**vars(run.args), "duration": b1_s, "b2_duration": b2_s})
    env = {"BRIDGE_REDIS_CLUSTER": "true", "BRIDGE_REDIS_WAIT_REPLICAS": str(wait_replicas)}
    with infra.redis_cluster(
        primaries=B7_PRIMARIES, replicas=replicas, persistence=args.redis_persistence
    ) as handle:
        crun = dataclasses.replace(run, args=args, redis=handle, run_id=run.run_id + tag)
        crun.say(f"B7: {handle.description} at {handle.url}")
        with infra.service(
            crun.workdir,
            redis_url=handle.url,
            products_file=crun.products_file,
            env=env,
            log_name=f"service-{tag}.log",
        ) as svc:
            crun.say(f"B7: service pid {svc.proc.pid}, BRIDGE_REDIS_WAIT_REPLICAS={wait_replicas}")
            prefix, sessions = f"b1-{crun.run_id}-", args.b1_sessions
            uvloop.run(_link_prefix(infra.base_url(svc), "b1", prefix, sessions))
            measured = b1_service(
                crun, svc, product_id="b1", prefix=prefix, sessions=sessions, tag="b1"
            )
            crun.say(f"B7 B1: {measured['requests_per_s']:.0f} req/s, {measured['errors']} errors")
            latencies = uvloop.run(_b2_runs(crun, svc))
            errors = _service_errors(svc)
    crun.say(
        f"B7: cluster stopped; answers >= 400: {errors['http_status_ge_400'] or 'none'}, "
        f"failed note posts: {errors['note_failures'] or 'none'}"
    )
    return {
        "redis": handle.description,
        "primaries": B7_PRIMARIES,
        "replicas_per_primary": replicas,
        "wait_replicas": wait_replicas,
        "b1": measured,
        **latencies,
        **errors,
    }


def b7(run: Run, results: dict[str, Any]) -> dict[str, Any]:
    args = run.args
    standalone = b7_standalone(results)
    run.say(
        "B7 on a Redis Cluster: B1 and B2 only (B3, B4's memory and B5 are not run on it); "
        "Redis CPU there is the sum over the primaries"
    )
    cluster = on_cluster(
        run,
        replicas=0,
        wait_replicas=0,
        b1_s=args.duration,
        b2_s=args.cluster_b2_duration,
        tag="c",
    )
    figures = cluster_figures(cluster)
    out: dict[str, Any] = {
        "within": B7_WITHIN,
        "standalone": standalone,
        "cluster": cluster,
        "cluster_figures": figures,
        "cluster_vs_standalone": _ratios(figures, standalone),
    }
    if not args.wait_duration:
        run.say("B7: the WAIT run is skipped (--wait-duration 0)")
        return out
    wait = on_cluster(
        run,
        replicas=1,
        wait_replicas=1,
        b1_s=args.wait_duration,
        b2_s=args.wait_duration,
        tag="w",
    )
    out["wait"] = wait
    out["wait_figures"] = wait_figures = cluster_figures(wait)
    out["wait_vs_cluster"] = _ratios(wait_figures, figures)
    return out


# -- the table --------------------------------------------------------------------------------


def _row(
    bench_id: str,
    what: str,
    baseline: str,
    measured: str,
    ratio: str,
    target: str,
    met: bool | None,  # None: a figure for information, with no target
) -> dict[str, Any]:
    return {
        "id": bench_id,
        "what": what,
        "baseline": baseline,
        "measured": measured,
        "ratio": ratio,
        "target": target,
        "met": met,
    }


def b1_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    base, svc, ratio = result["baseline"], result["service"], result["ratio"]
    return [
        _row(
            "B1",
            f"ingest req/s (10 actions, {svc['connections']} conn)",
            f"{base['requests_per_s']:.0f} req/s bare",
            f"{svc['requests_per_s']:.0f} req/s",
            f"{ratio:.2f}",
            f">= {B1_TARGET}",
            ratio >= B1_TARGET
            and svc["errors"] == 0
            and svc["actions_stored"] >= svc["actions_answered_202"],
        )
    ]


def b6_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    cpu = b6_figures(results)
    rate = results["b2"]["rate_per_s"]
    bare = results["b1"]["baseline"]["cpu"]["server"]["cpu_ms_per_request"]
    rows = [
        _row(
            "B6",
            "service CPU per ingested batch (B1)",
            f"{bare:.3f} ms bare endpoint",
            f"{cpu['batch_b1']:.3f} ms",
            f"{cpu['batch_b1'] / bare:.2f}",
            f"<= {B6_BATCH_TARGET_MS} ms",
            cpu["batch_b1"] <= B6_BATCH_TARGET_MS,
        )
    ]
    if cpu["note"] is not None and cpu["batch_at_b2_rate"] is not None:
        rows.append(
            _row(
                "B6",
                f"service CPU per delivered note (B2 less intake at {rate:g}/s: "
                f"{cpu['batch_at_b2_rate']:.3f} ms per batch)",
                f"{B6_NOTE_TARGET_MS} ms target",
                f"{cpu['note']:.3f} ms",
                f"{cpu['note'] / B6_NOTE_TARGET_MS:.2f}",
                f"<= {B6_NOTE_TARGET_MS} ms",
                cpu["note"] <= B6_NOTE_TARGET_MS,
            )
        )
    return rows


def b2_rows(b2: dict[str, Any]) -> list[dict[str, Any]]:
    lat, debounce = b2["latency_ms"], b2["debounce_ms"]
    return [
        _row(
            "B2",
            f"post-link p{p}, {b2['rate_per_s']:.0f} batches/s ({b2['service_cores_busy']} cores)",
            f"{debounce:.0f} ms debounce",
            f"{lat.get(f'p{p}')} ms",
            f"{b2[f'ratio_p{p}']}",
            f"<= {target:.0f} ms",
            lat.get(f"p{p}", 1e9) <= target and b2["batches_not_delivered"] == 0,
        )
        for p, target in ((50, B2_P50_TARGET_MS), (99, B2_P99_TARGET_MS))
    ]


def sweep_rows(sweep: dict[str, Any], *, target_rate: float) -> list[dict[str, Any]]:
    """Where B2's p99 first exceeds its target, as a multiple of the rate B2 must sustain
    (for information: the target is B2's own row)."""
    first_over = sweep["first_rate_over_200ms_p99"]
    never = first_over is None
    rate = max(p["rate_per_s"] for p in sweep["points"]) if never else first_over
    above = "> " if never else ""
    return [
        _row(
            "B2",
            f"rate where p99 first exceeds {B2_P99_TARGET_MS:.0f} ms",
            f"{target_rate:.0f} batches/s target",
            f"{above}{rate:.0f} batches/s",
            f"{above}{rate / target_rate:.2f}",
            "info",
            None,
        )
    ]


def b3_rows(b3: dict[str, Any]) -> list[dict[str, Any]]:
    one = b3["bursts_with_exactly_one_note"]
    return [
        _row(
            "B3",
            f"notes per burst ({b3['bursts']} bursts)",
            "1 note per burst",
            json.dumps(b3["notes_per_burst"]),
            f"{one / b3['bursts']:.3f}",
            "exactly 1",
            one == b3["bursts"],
        )
    ]


def b5_rows(b5: dict[str, Any]) -> list[dict[str, Any]]:
    p99, floor_p99 = b5["latency_ms"].get("p99", 1e9), b5["floor"]["latency_ms"].get("p99")
    return [
        _row(
            "B5",
            f"at-link flush p99 (p50 {b5['latency_ms'].get('p50')} ms)",
            f"{floor_p99} ms one hop",
            f"{p99} ms",
            f"{b5.get('ratio_p99_to_floor_p99')}",
            f"<= {B5_P99_TARGET_MS:.0f} ms",
            p99 <= B5_P99_TARGET_MS and b5["flush_notes"] == b5["sessions"],
        )
    ]


def b4_rows(b4_result: dict[str, Any]) -> list[dict[str, Any]]:
    memory, n = b4_result["memory"], b4_result["memory"]["sessions"]
    rel = b4_result["b1_vs_1000_sessions"]
    return [
        _row(
            "B4",
            f"Redis bytes per idle linked session ({n})",
            "1 KiB",
            f"{memory['bytes_per_session']:.0f} B",
            f"{memory['bytes_per_session'] / B4_BYTES_TARGET:.2f}",
            f"<= {B4_BYTES_TARGET} B",
            memory["bytes_per_session"] <= B4_BYTES_TARGET,
        ),
        _row(
            "B4",
            f"B1 over {n} sessions (ratio {b4_result['b1_ratio_at_scale']:.2f})",
            "B1 over 1000 (mean of 2)",
            f"{b4_result['b1_at_scale']['requests_per_s']:.0f} req/s",
            f"{rel:.2f}",
            f">= {B4_RATIO_TARGET}",
            rel >= B4_RATIO_TARGET,
        ),
        _row(
            "B4",
            f"service RSS after B1 over {n}",
            f"{b4_result['service_rss_kib']['after_b1_1000'] / 1024:.1f} MiB (1000)",
            f"{b4_result['b1_at_scale']['service_rss_kib'] / 1024:.1f} MiB",
            f"{b4_result['service_rss_growth_pct']:+.1f} %",
            f"< +{B4_RSS_GROWTH_PCT:.0f} %",
            b4_result["service_rss_growth_pct"] < B4_RSS_GROWTH_PCT,
        ),
    ]


def _b8_problems(svc: dict[str, Any]) -> str:
    """What would make B8's figure not the intake of new events: errors, events answered but
    not accepted (or counted as duplicates, or ignored), requests wrk sent twice."""
    problems = []
    if svc["errors"] or svc["warmup_errors"]:
        problems.append(f"{svc['errors'] + svc['warmup_errors']} errors")
    if svc["events_accepted"] < svc["events_answered_202"]:
        problems.append(f"{svc['events_answered_202'] - svc['events_accepted']} not accepted")
    if svc["duplicate_events"]:
        problems.append(f"{svc['duplicate_events']} duplicates")
    if svc["ignored_events"]:
        problems.append(f"{svc['ignored_events']} ignored")
    repeated = svc["requests_repeated"] + svc["warmup_requests_repeated"]
    if repeated:
        problems.append(f"{repeated} requests repeated")
    return "".join(f", {p}" for p in problems)


def b8_rows(result: dict[str, Any], b1_result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """For information (no target yet): events/s against B1's bare endpoint, CPU per event
    against B1's per batch (the bare endpoint's per request when B1 did not run), and wrk's
    CPU beside the service's."""
    base, svc = result["baseline"], result["service"]
    cpu, batch = svc["cpu"], result["b1_cpu_ms_per_batch"]
    if batch is not None:
        against, reference = f"{batch:.3f} ms per B1 batch", batch
    else:
        reference = base["cpu"]["server"]["cpu_ms_per_request"]
        against = f"{reference:.3f} ms bare endpoint"
    event_ms = result["cpu_ms_per_event"]
    wrk_cores, svc_cores = cpu["wrk"]["cores_busy"], cpu["server"]["cores_busy"]
    in_b1 = f", B1: {b1_result['service']['cpu']['wrk']['cores_busy']:.2f}" if b1_result else ""
    return [
        _row(
            "B8",
            f"PostHog intake events/s (1 signed event, {svc['connections']} conn)",
            f"{base['requests_per_s']:.0f} req/s bare",
            f"{svc['requests_per_s']:.0f} events/s{_b8_problems(svc)}",
            f"{result['ratio']:.2f}",
            "info",
            None,
        ),
        _row(
            "B8",
            "service CPU per PostHog event",
            against,
            f"{event_ms:.3f} ms",
            _ratio(_ratio_of(event_ms, reference)),
            "info",
            None,
        ),
        _row(
            "B8",
            f"wrk CPU during B8 (cores{in_b1})",
            f"{svc_cores:.2f} cores service",
            f"{wrk_cores:.2f} cores",
            _ratio(_ratio_of(wrk_cores, svc_cores)),
            "info",
            None,
        ),
    ]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value} ms"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _b7_row(
    what: str, baseline: str, measured: str, ratio: float | None, target: str, met: bool | None
) -> dict[str, Any]:
    return _row("B7", what, baseline, measured, _ratio(ratio), target, met)


def _b7_latency_rows(
    label: str,
    figures: dict[str, Any],
    reference: dict[str, Any],
    ratios: dict[str, float | None],
    against: str,
    *,
    within: float | None,
) -> list[dict[str, Any]]:
    """B2's p50/p99 (met when within ``within`` of the reference; None: no target), then the
    info rate's (no target)."""
    rows = []
    for run in ("b2", "b2_info"):
        if f"{run}_latency_ms" not in figures or f"{run}_latency_ms" not in reference:
            continue
        lat, ref = figures[f"{run}_latency_ms"], reference[f"{run}_latency_ms"]
        limit = within if run == "b2" else None
        for p in (50, 99):
            ratio = ratios[f"{run}_p{p}"]
            met = None
            if limit is not None:
                delivered = figures[f"{run}_batches_not_delivered"] == 0
                met = ratio is not None and ratio <= 1 + limit and delivered
            rows.append(
                _b7_row(
                    f"{label}: B2 p{p}, {figures[f'{run}_rate_per_s']:.0f} batches/s",
                    f"{_ms(ref.get(f'p{p}'))} {against}",
                    _ms(lat.get(f"p{p}")),
                    ratio,
                    "info" if limit is None else f"<= {1 + limit:.2f}",
                    met,
                )
            )
    return rows


def _b7_cpu_rows(
    label: str, figures: dict[str, Any], reference: dict[str, Any], against: str
) -> list[dict[str, Any]]:
    """The service's (and Redis's) CPU per batch beside the reference's (no target)."""
    return [
        _b7_row(
            f"{label}: {what}",
            f"{reference[key]:.3f} ms {against}",
            f"{figures[key]:.3f} ms",
            _ratio_of(figures[key], reference[key]),
            "info",
            None,
        )
        for key, what in (
            ("b1_service_cpu_ms_per_batch", "service CPU per batch, B1"),
            ("b2_service_cpu_ms_per_batch", "service CPU per batch and its note, B2"),
            ("b1_redis_cpu_ms_per_batch", "Redis CPU per batch, B1 (sum of primaries)"),
        )
    ]


def b7_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    standalone, figures, within = result["standalone"], result["cluster_figures"], result["within"]
    ratios, b1 = result["cluster_vs_standalone"], result["cluster"]["b1"]
    runs = standalone["b1_runs"]
    b1_ratio = ratios["b1_requests_per_s"]
    rows = [
        _b7_row(
            f"cluster ({B7_PRIMARIES} primaries): B1 ingest req/s",
            f"{standalone['b1_requests_per_s']:.0f} req/s standalone"
            + (f" (mean of {runs})" if runs > 1 else ""),
            f"{b1['requests_per_s']:.0f} req/s",
            b1_ratio,
            f">= {1 - within:.2f}",
            b1_ratio is not None
            and b1_ratio >= 1 - within
            and b1["errors"] == 0
            and b1["actions_stored"] >= b1["actions_answered_202"],
        )
    ]
    rows += _b7_latency_rows("cluster", figures, standalone, ratios, "standalone", within=within)
    rows += _b7_cpu_rows("cluster", figures, standalone, "standalone")
    if "wait" in result:
        rows += wait_rows(result)
    return rows


def wait_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The WAIT run against the cluster run without WAIT: for information, no target."""
    wait, figures, reference = result["wait"], result["wait_figures"], result["cluster_figures"]
    ratios, b1 = result["wait_vs_cluster"], wait["b1"]
    label = f"WAIT {wait['wait_replicas']}"
    nodes = B7_PRIMARIES * (1 + wait["replicas_per_primary"])
    errors = f", {b1['errors']} errors" if b1["errors"] else ""
    rows = [
        _b7_row(
            f"{label} ({nodes} nodes): B1 ingest req/s",
            f"{reference['b1_requests_per_s']:.0f} req/s cluster, no WAIT",
            f"{b1['requests_per_s']:.0f} req/s{errors}",
            ratios["b1_requests_per_s"],
            "info",
            None,
        )
    ]
    rows += _b7_latency_rows(label, figures, reference, ratios, "no WAIT", within=None)
    return rows


def table(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if "b1" in results:  # not with --only b8
        rows += b1_rows(results["b1"]) + b2_rows(results["b2"])
        if "b2_sweep" in results:
            rows += sweep_rows(results["b2_sweep"], target_rate=results["b2"]["rate_per_s"])
        rows += b6_rows(results)
        rows += b3_rows(results["b3"]) + b5_rows(results["b5"])
    if "b4" in results:
        rows += b4_rows(results["b4"])
    if "b8" in results:
        rows += b8_rows(results["b8"], results.get("b1"))
    if "b7" in results:
        rows += b7_rows(results["b7"])
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = ("id", "what", "baseline", "measured", "ratio", "target", "met")
    cells = [
        [str(r[c]) if c != "met" else {True: "yes", False: "NO", None: "-"}[r[c]] for c in columns]
        for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print()
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


# -- main ---------------------------------------------------------------------------------------


def parse_rates(text: str) -> list[float]:
    """--sweep-rates: batches/s, comma-separated, in any order; "" or "0" is no sweep."""
    try:
        rates = sorted({float(r) for r in text.split(",") if r.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of rates: {text!r}") from None
    if rates == [0.0]:
        return []
    if any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be > 0: {text!r}")
    return rates


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=15.0, help="seconds of each measured wrk run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of the wrk warm-up")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--b1-sessions", type=int, default=1000)
    p.add_argument("--debounce", type=float, default=0.15, help="B2/B3 product debounce (s)")
    p.add_argument("--b2-sessions", type=int, default=500)
    p.add_argument("--b2-rate", type=float, default=200.0, help="batches per second")
    p.add_argument("--b2-duration", type=float, default=20.0, help="seconds of B2 load")
    p.add_argument("--b3-sessions", type=int, default=200)
    p.add_argument(
        "--b2-info-rate",
        type=float,
        default=100.0,
        help="the B2 rate B7 compares the cluster at: the sweep's run at this rate, or a run of"
        " its own for half --b2-duration when the sweep has none (0: skip)",
    )
    p.add_argument(
        "--sweep-rates",
        type=parse_rates,
        default=DEFAULT_SWEEP_RATES,
        help="B2 again at each of these batches/s, ascending, after the run at --b2-rate, up to"
        f' the first whose p99 exceeds {B2_P99_TARGET_MS:.0f} ms ("" or 0: no sweep)',
    )
    p.add_argument(
        "--sweep-duration", type=float, default=8.0, help="seconds of B2 load at each swept rate"
    )
    p.add_argument("--b3-spread", type=float, default=20.0, help="bursts start over this many s")
    p.add_argument("--b5-sessions", type=int, default=300)
    p.add_argument("--b5-rate", type=float, default=50.0, help="link webhooks per second")
    p.add_argument("--b4-sessions", type=int, default=100_000, help="0 skips B4")
    p.add_argument(
        "--redis-persistence",
        choices=("everysec", "always", "none"),
        default="everysec",
        help="AOF fsync policy of the bench's redis-server (docker-compose.yml: everysec)",
    )
    p.add_argument("--skip-cluster", action="store_true", help="skip B7 (the Redis Cluster runs)")
    p.add_argument(
        "--cluster-b2-duration",
        type=float,
        default=15.0,
        help="seconds of B7's B2 on the cluster (its B1 runs --duration)",
    )
    p.add_argument(
        "--wait-duration",
        type=float,
        default=10.0,
        help="B7's WAIT run: seconds of its B1 and of its B2 (0: skip it)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a short smoke run (not for numbers); the default sweep becomes {QUICK_SWEEP_RATES}"
        " at 3 s",
    )
    p.add_argument(
        "--b8-duration", type=float, default=10.0, help="seconds of B8's measured wrk run"
    )
    p.add_argument("--b8-sessions", type=int, default=1000, help="B8's linked PostHog sessions")
    p.add_argument(
        "--only",
        choices=("b8",),
        help="b8: B1's baseline and B8 alone (B1 to B7 are not run)",
    )
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.b2_duration, args.b3_spread = 3.0, 1.0, 5.0, 2.0
        args.b8_duration = min(args.b8_duration, 3.0)
        args.b4_sessions = min(args.b4_sessions, 5000)
        args.cluster_b2_duration = min(args.cluster_b2_duration, args.b2_duration)
        args.wait_duration = min(args.wait_duration, 3.0)
        if args.sweep_rates == parse_rates(DEFAULT_SWEEP_RATES):
            args.sweep_rates = parse_rates(QUICK_SWEEP_RATES)
        args.sweep_duration = min(args.sweep_duration, 3.0)
    return args


def source() -> dict[str, Any]:
    """Which code was measured: others may be changing it between runs."""

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "app_changes": git("status", "--short", "app"),
    }


def machine() -> dict[str, Any]:
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0].strip(),
    }


def measure_all(run: Run) -> dict[str, Any]:
    results: dict[str, Any] = {}
    baseline = b1_baseline(run)
    with infra.service(
        run.workdir, redis_url=run.redis.url, products_file=run.products_file
    ) as svc:
        run.say(f"service pid {svc.proc.pid} at {infra.base_url(svc)}")
        if run.args.only == "b8":
            run.say("--only b8: B1's baseline, then B8; B1 to B7 are not run")
            results["b8"] = b8(run, svc, baseline, None)
            return results
        results["b1"] = b1(run, svc, baseline)
        # B4 next: its B1 runs then follow B1's directly (RSS and throughput comparable).
        if run.args.b4_sessions:
            results["b4"] = b4(run, svc, results["b1"])
        # B8 while the service is as warm as in B1 and B4, whose wrk runs it is compared with.
        results["b8"] = b8(run, svc, baseline, results["b1"])
        results.update(uvloop.run(latency_suite(run, svc)))
    missing = missing_binaries()
    if run.args.skip_cluster:
        run.say("B7 skipped (--skip-cluster)")
    elif missing:
        run.say(f"B7 skipped: {', '.join(missing)} not on PATH (make bench installs them)")
    else:
        results["b7"] = b7(run, results)
    return results


@contextlib.contextmanager
def started(args: argparse.Namespace, workdir: Path) -> Iterator[Run]:
    start = time.monotonic()
    with (
        infra.redis_server(workdir, args.redis_persistence) as redis_handle,
        infra.fake_bot(workdir) as bot,
    ):
        products_file = infra.write_products(
            workdir, bot_url=bot.notes_url, debounce_s=args.debounce
        )
        run = Run(args, workdir, redis_handle, bot, products_file, uuid.uuid4().hex[:6], start)
        run.say(f"{redis_handle.description} at {redis_handle.url}; fake bot {bot.base_url}")
        yield run


def write_plot(document: dict[str, Any]) -> Path | None:
    """The sweep's plot beside latest.json; an older plot is removed when there was no sweep,
    so the two files always describe the same run."""
    if "b2_sweep" not in document:
        PLOT_FILE.unlink(missing_ok=True)
        return None
    measured, host = document["source"], document["machine"]
    changed = " + uncommitted app changes" if measured["app_changes"] else ""
    return plot.write_latency_svg(
        PLOT_FILE,
        document["b2_sweep"]["points"],
        title="B2 post-link delivery latency by offered rate",
        subtitle=f"commit {measured['commit']}{changed}, {host['cpus']} CPUs, "
        f"{host['platform']}, Python {host['python']}, {document['date']}",
        targets={"p50": B2_P50_TARGET_MS, "p99": B2_P99_TARGET_MS},
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    measured_source = source()  # before the run: the code may change while it runs
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        with started(args, workdir) as run:
            results = measure_all(run)
            redis_description = run.redis.description
            runtime_s = round(time.monotonic() - run.start, 1)
    except BaseException:
        print(f"\nbench failed: process logs are kept in {workdir}", file=sys.stderr)
        raise
    rows = table(results)
    document = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "options": vars(args),
        "machine": machine(),
        "source": measured_source,
        "redis": redis_description,
        "runtime_s": runtime_s,
        "table": rows,
        **results,
    }
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(json.dumps(document, indent=2) + "\n")
    plotted = write_plot(document)
    print_table(rows)
    print(f"\n{runtime_s} s; results in {RESULTS_FILE.relative_to(REPO_ROOT)}")
    if plotted:
        print(f"B2 latency by rate: {plotted.relative_to(REPO_ROOT)}")
    shutil.rmtree(workdir, ignore_errors=True)
    missed = [r["id"] for r in rows if r["met"] is False]
    if missed:
        print(f"targets missed: {', '.join(dict.fromkeys(missed))} (docs/performance.md)")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
