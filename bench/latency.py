"""B2 (post-link delivery latency), B3 (coalescing), B5 (at-link flush) and the one-hop floor
they are compared with. Every action's description starts with ``<bench>|<batch key>|<n>``, so
a note the fake bot received maps back to the batches (and their 202 times) it carries."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.security import decode_whsec, standard_webhook_headers
from bench.infra import BotRecords
from bench.loadgen import Sender, Sent, batch_body, bounded, collect, link_all, paced, percentiles
from tests.conftest import HTTP_SECRET

PRODUCT = "lat"
ACTIONS_PER_BATCH = 10
NOTE_TIMEOUT_S = 15.0
SETTLE_S = 0.5  # after the last expected note: long enough to see a stray extra one


def descriptions(bench: str, key: int, n: int = ACTIONS_PER_BATCH) -> list[str]:
    return [f"{bench}|{key}|{i} User clicked Export CSV on the Reports page" for i in range(n)]


def batch_keys(note: dict[str, Any], bench: str) -> set[int]:
    prefix = bench + "|"
    return {int(d.split("|", 2)[1]) for d in note["descriptions"] if d.startswith(prefix)}


def notes_of(records: list[dict[str, Any]], bench: str) -> list[dict[str, Any]]:
    """The accepted action notes that carry this benchmark's actions."""
    return [
        r for r in records if r["status"] == 200 and r["kind"] == "actions" and batch_keys(r, bench)
    ]


def all_delivered(bench: str, keys: set[int]) -> Any:
    def done(records: list[dict[str, Any]]) -> bool:
        seen: set[int] = set()
        for note in notes_of(records, bench):
            seen |= batch_keys(note, bench)
        return keys <= seen

    return done


async def send_batch(
    sender: Sender, bench: str, key: int, session_id: str, product_id: str = PRODUCT
) -> Sent:
    body = batch_body(session_id, descriptions(bench, key), ts=time.time())
    return await sender.batch(key, product_id, body)


async def paced_batches(
    sender: Sender,
    bench: str,
    product_id: str,
    session_ids: Sequence[str],
    plan: B2Plan,
    service_cpu: Callable[[], float],
) -> tuple[list[Sent], float, float]:
    """Link the sessions, then send the plan's batches to them round-robin at its rate, open
    loop. Returns what was sent, the service's CPU seconds and the seconds the sending took."""
    await link_all(sender, product_id, session_ids)
    total = round(plan.rate_per_s * plan.duration_s)
    jobs = [
        (lambda k=k: send_batch(sender, bench, k, session_ids[k % len(session_ids)], product_id))
        for k in range(total)
    ]
    cpu_before, started = service_cpu(), time.monotonic()
    sent = await paced(jobs, rate_per_s=plan.rate_per_s)
    return sent, service_cpu() - cpu_before, time.monotonic() - started


def accepted_times(sent: Sequence[Sent]) -> dict[int, float]:
    return {s.key: s.answered_at for s in sent if s.status == 202}


# -- B2 ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class B2Plan:
    sessions: int
    rate_per_s: float
    duration_s: float
    debounce_s: float


def note_latencies_ms(notes: list[dict[str, Any]], accepted: dict[int, float]) -> list[float]:
    """Per note: its arrival at the fake minus the 202 of the last batch it carries."""
    out = []
    for note in notes:
        times = [accepted[k] for k in batch_keys(note, "b2") if k in accepted]
        if times:
            out.append((note["at"] - max(times)) * 1000)
    return out


def b2_report(
    plan: B2Plan, sent: list[Sent], notes: list[dict[str, Any]], cpu_s: float, elapsed_s: float
) -> dict[str, Any]:
    """``cpu_s``: the service's CPU seconds over the ``elapsed_s`` the batches took to send."""
    accepted = accepted_times(sent)
    latencies = note_latencies_ms(notes, accepted)
    debounce_ms = plan.debounce_s * 1000
    stats = percentiles(latencies)
    delivered = set().union(*(batch_keys(n, "b2") for n in notes)) if notes else set()
    return {
        "sessions": plan.sessions,
        "rate_per_s": plan.rate_per_s,
        "duration_s": plan.duration_s,
        "achieved_rate_per_s": round(len(sent) / (sent[-1].sent_at - sent[0].sent_at), 1),
        "batches_sent": len(sent),
        "batches_accepted": len(accepted),
        "batches_not_delivered": len(set(accepted) - delivered),
        "notes": len(notes),
        "batches_per_note": {
            str(k): v for k, v in sorted(Counter(len(batch_keys(n, "b2")) for n in notes).items())
        },
        "debounce_ms": debounce_ms,
        "latency_ms": stats,
        "overhead_ms": percentiles([x - debounce_ms for x in latencies]),
        "ratio_p50": round(stats["p50"] / debounce_ms, 3) if latencies else None,
        "ratio_p99": round(stats["p99"] / debounce_ms, 3) if latencies else None,
        "ingest_response_ms": percentiles([s.took_ms for s in sent]),
        "service_cores_busy": round(cpu_s / elapsed_s, 2),
        # A batch's ingest and its note's delivery (one note per batch while the service keeps
        # up: the notes are posted at the rate the batches arrive, 150 ms later).
        "service_cpu_ms_per_batch": round(cpu_s * 1000 / len(sent), 3),
    }


async def b2(
    sender: Sender,
    bot: BotRecords,
    *,
    run_id: str,
    plan: B2Plan,
    service_cpu: Callable[[], float],
) -> dict[str, Any]:
    """Round-robin batches over linked sessions at a fixed rate (a session every
    sessions/rate seconds, far more than the debounce), each answered by one note."""
    sids = [f"b2-{run_id}-{i}" for i in range(plan.sessions)]
    since = bot.count()  # linking a session with nothing buffered posts no note
    sent, cpu_s, elapsed_s = await paced_batches(sender, "b2", PRODUCT, sids, plan, service_cpu)
    records = await collect(
        bot,
        since=since,
        done=all_delivered("b2", set(accepted_times(sent))),
        timeout_s=NOTE_TIMEOUT_S,
    )
    return b2_report(plan, sent, notes_of(records, "b2"), cpu_s, elapsed_s)


async def intake_at_rate(
    sender: Sender,
    *,
    run_id: str,
    plan: B2Plan,
    product_id: str,
    service_cpu: Callable[[], float],
) -> dict[str, Any]:
    """B2's load on a product whose notes are not due during the run (B1's): the service's CPU
    per batch for intake alone at B2's rate, which B6 subtracts from B2's to price a note."""
    sids = [f"b6-{run_id}-{i}" for i in range(plan.sessions)]
    sent, cpu_s, elapsed_s = await paced_batches(sender, "b6", product_id, sids, plan, service_cpu)
    return {
        "rate_per_s": plan.rate_per_s,
        "duration_s": plan.duration_s,
        "batches_sent": len(sent),
        "batches_accepted": len(accepted_times(sent)),
        "service_cores_busy": round(cpu_s / elapsed_s, 2),
        "service_cpu_ms_per_batch": round(cpu_s * 1000 / len(sent), 3),
    }


# -- B3 ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class B3Plan:
    sessions: int
    spread_s: float  # the bursts' starts are spread evenly over this
    batches: int
    gap_s: float
    debounce_s: float


async def burst(
    sender: Sender, *, session_id: str, first_key: int, begin: float, plan: B3Plan
) -> list[Sent]:
    """One session's burst: batch k is sent at begin + k * gap (after the previous answer)."""
    out = []
    for k in range(plan.batches):
        delay = begin + k * plan.gap_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        out.append(await send_batch(sender, "b3", first_key + k, session_id))
    return out


def max_gap_ms(sent: list[Sent]) -> float:
    answers = [s.answered_at for s in sent]
    return max(((b - a) * 1000 for a, b in itertools.pairwise(answers)), default=0.0)


async def b3(sender: Sender, bot: BotRecords, *, run_id: str, plan: B3Plan) -> dict[str, Any]:
    sids = [f"b3-{run_id}-{i}" for i in range(plan.sessions)]
    await link_all(sender, PRODUCT, sids)
    since = bot.count()
    start = time.monotonic() + 0.1
    step = plan.spread_s / plan.sessions
    bursts = await asyncio.gather(
        *(
            burst(
                sender,
                session_id=sid,
                first_key=i * plan.batches,
                begin=start + i * step,
                plan=plan,
            )
            for i, sid in enumerate(sids)
        )
    )
    accepted = accepted_times([s for b in bursts for s in b])
    records = await collect(
        bot,
        since=since,
        done=all_delivered("b3", set(accepted)),
        timeout_s=NOTE_TIMEOUT_S,
        settle_s=SETTLE_S,
    )
    per_session = Counter(n["session_id"] for n in notes_of(records, "b3"))
    distribution = Counter(per_session.get(sid, 0) for sid in sids)
    gaps = [max_gap_ms(b) for b in bursts]
    return {
        "sessions": plan.sessions,
        "bursts": len(bursts),
        "batches_per_burst": plan.batches,
        "gap_ms": plan.gap_s * 1000,
        "batches_accepted": len(accepted),
        "notes_per_burst": {str(k): v for k, v in sorted(distribution.items())},
        "bursts_with_exactly_one_note": distribution.get(1, 0),
        "max_gap_between_202s_ms": percentiles(gaps),
        "bursts_with_a_gap_over_debounce": sum(g > plan.debounce_s * 1000 for g in gaps),
    }


# -- B5 ---------------------------------------------------------------------------------------


def first_notes(records: list[dict[str, Any]], sids: set[str]) -> dict[str, dict[str, Any]]:
    first: dict[str, dict[str, Any]] = {}
    for note in sorted(notes_of(records, "b5"), key=lambda n: n["at"]):
        if note["session_id"] in sids:
            first.setdefault(note["session_id"], note)
    return first


async def prelink_batches(sender: Sender, sids: list[str]) -> None:
    jobs = [(lambda i=i, sid=sid: send_batch(sender, "b5", i, sid)) for i, sid in enumerate(sids)]
    sent = await bounded(jobs, limit=16)
    bad = [s for s in sent if s.status != 202 or s.body.get("linked")]
    if bad:
        raise RuntimeError(f"{len(bad)} pre-link batch(es) failed, e.g. {bad[0]}")


async def b5(
    sender: Sender, bot: BotRecords, *, run_id: str, sessions: int, rate_per_s: float
) -> dict[str, Any]:
    """Each session gets a pre-link batch, then (paced) its link webhook: from the webhook's
    send time to the flush note's arrival at the fake."""
    sids = [f"b5-{run_id}-{i}" for i in range(sessions)]
    await prelink_batches(sender, sids)
    since = bot.count()
    jobs = [(lambda i=i: sender.link(i, PRODUCT, sids[i])) for i in range(sessions)]
    sent = await paced(jobs, rate_per_s=rate_per_s)
    linked = {sids[s.key]: s for s in sent if s.status == 200 and s.body["status"] == "linked"}
    wanted = set(linked)
    records = await collect(
        bot,
        since=since,
        done=lambda r: set(first_notes(r, wanted)) >= wanted,
        timeout_s=NOTE_TIMEOUT_S,
    )
    first = first_notes(records, wanted)
    latencies = [(first[sid]["at"] - linked[sid].sent_at) * 1000 for sid in first]
    complete = sum(len(n["descriptions"]) == ACTIONS_PER_BATCH for n in first.values())
    return {
        "sessions": sessions,
        "webhook_rate_per_s": rate_per_s,
        "linked": len(linked),
        "flush_notes": len(first),
        "flush_notes_with_all_prelink_actions": complete,
        "latency_ms": percentiles(latencies),
        "webhook_response_ms": percentiles([s.took_ms for s in sent]),
    }


# -- the one-hop floor ------------------------------------------------------------------------


def floor_note(run_id: str, k: int) -> bytes:
    note = {
        "type": "note",
        "product_id": "floor",
        "session_id": f"floor-{run_id}-{k}",
        "conversation_id": f"conv-floor-{k}",
        "kind": "actions",
        "body": "\n".join(descriptions("floor", k)),
        "actions": [{"description": d, "timestamp_start": 1.0} for d in descriptions("floor", k)],
    }
    return json.dumps(note, separators=(",", ":")).encode()


async def floor(bot: BotRecords, *, run_id: str, posts: int, rate_per_s: float) -> dict[str, Any]:
    """The cheapest note delivery this machine can do: a signed note POSTed from this process
    straight to the fake bot; from its send time to the fake's receive time."""
    key = decode_whsec(HTTP_SECRET)
    sent_at: dict[str, float] = {}
    since = bot.count()
    poster = Sender(bot.base_url)

    async def post(k: int) -> Sent:
        body = floor_note(run_id, k)
        signed = standard_webhook_headers(
            key, msg_id=f"floor_{run_id}_{k}", timestamp=int(time.time()), body=body
        )
        headers = {"content-type": "application/json", **signed}
        sent = await poster.post(k, "/notes", body, headers)
        sent_at[f"floor-{run_id}-{k}"] = sent.sent_at
        return sent

    try:
        await paced([functools.partial(post, k) for k in range(posts)], rate_per_s=rate_per_s)
    finally:
        await poster.aclose()
    records = await collect(
        bot, since=since, done=lambda r: len(r) >= posts, timeout_s=NOTE_TIMEOUT_S
    )
    arrived = {r["session_id"]: r["at"] for r in records}
    latencies = [(arrived[s] - t) * 1000 for s, t in sent_at.items() if s in arrived]
    return {"posts": posts, "latency_ms": percentiles(latencies)}
