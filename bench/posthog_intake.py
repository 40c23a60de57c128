"""B8: PostHog intake with wrk (bench/wrk_posthog.lua). ``POST /posthog/<product>`` with one
``$autocapture`` click a request, shaped and signed the way PostHog's HTTP Webhook destination
sends it (Standard Webhooks: ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``,
``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`` under the base64-decoded ``whsec_``
key), rotating over linked sessions. wrk's Lua cannot sign cheaply, so each run's requests are
made and signed here just before it starts, into a pool file the script reads: every request
carries an event ``uuid`` of its own (a repeated one would measure the dedupe path), and the
pool holds more requests than the run can send (the script counts any it had to resend)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import math
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench import throughput

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk_posthog.lua"
# A pool holds this many times the requests the run would send at the expected rate.
POOL_MARGIN = 1.5
# Signatures are made when the pool is; the service refuses them 300 s later. A run (and the
# time to write and load its pool) must end well before that.
SIGNATURE_TOLERANCE_S = 300.0
MAX_RUN_S = 240.0
EVENT_SPACING_S = 0.001  # between consecutive events' timestamps, all in the past
NAMESPACE = uuid.UUID("8b0f5a52-34a6-4d1e-9a57-6c1f0e2b7d90")  # the bench's ids, by name
PROJECT_ID = 48213
APP = "https://app.acme.example"

# What the visitors click: the page, its query, and the elements_chain of the clicked element
# (the element first, then its ancestors), as posthog-js records them.
CLICKS: tuple[tuple[str, str, str], ...] = (
    (
        "/reports/42",
        "?tab=summary",
        'button.btn.btn-primary:attr__class="btn btn-primary"attr__type="button"nth-child="2"'
        'nth-of-type="1"text="Export CSV";div.toolbar:attr__class="toolbar"nth-child="1"'
        'nth-of-type="1";section.report:attr__class="report"nth-child="2"nth-of-type="1";'
        'main:nth-child="2"nth-of-type="1";body:nth-child="2"nth-of-type="1"',
    ),
    (
        "/pricing",
        "",
        'a.nav-link:attr__class="nav-link"attr__href="/signup?plan=team"href="/signup?plan=team"'
        'nth-child="3"nth-of-type="1"text="Start free trial";li.nav-item:attr__class="nav-item"'
        'nth-child="3"nth-of-type="3";ul.navbar-nav:attr__class="navbar-nav"nth-child="1"'
        'nth-of-type="1";nav:nth-child="1"nth-of-type="1";body:nth-child="2"nth-of-type="1"',
    ),
    (
        "/settings/billing",
        "?from=banner",
        'button.icon-button:attr__aria-label="Save changes"attr__class="icon-button"'
        'nth-child="1"nth-of-type="1";form.billing-form:attr__class="billing-form"'
        'attr__id="billing"nth-child="4"nth-of-type="1";div.container:attr__class="container"'
        'nth-child="1"nth-of-type="1";body:nth-child="2"nth-of-type="1"',
    ),
    (
        "/dashboard",
        "?range=30d",
        'span:nth-child="1"nth-of-type="1"text="Invite teammates";button.btn.btn-secondary'
        ':attr__class="btn btn-secondary"nth-child="4"nth-of-type="2";div.header-actions'
        ':attr__class="header-actions"nth-child="2"nth-of-type="1";header:nth-child="1"'
        'nth-of-type="1";body:nth-child="2"nth-of-type="1"',
    ),
)


@dataclass(frozen=True, slots=True)
class Visitor:
    """One PostHog session and the person it belongs to (ids shaped like PostHog's UUIDs)."""

    session_id: str
    window_id: str
    distinct_id: str
    person_id: str
    email: str


def visitors(run_id: str, count: int) -> list[Visitor]:
    """``count`` sessions of as many people, the same for the same ``run_id``."""

    def uid(kind: str, i: int) -> str:
        return str(uuid.uuid5(NAMESPACE, f"{run_id}/{kind}/{i}"))

    return [
        Visitor(
            session_id=uid("session", i),
            window_id=uid("window", i),
            distinct_id=uid("device", i),
            person_id=uid("person", i),
            email=f"user{i}@acme.example",
        )
        for i in range(count)
    ]


def _iso(moment: float) -> str:
    """PostHog's timestamps: UTC, milliseconds, ``Z``."""
    stamp = dt.datetime.fromtimestamp(moment, dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def autocapture_click(
    visitor: Visitor, *, event_uuid: str, at: float, click: int
) -> dict[str, Any]:
    """The destination's default body for one ``$autocapture`` click: ``{"event", "person"}``."""
    pathname, query, chain = CLICKS[click % len(CLICKS)]
    stamp = _iso(at)
    properties = {
        "$os": "Mac OS X",
        "$os_version": "14.3.0",
        "$browser": "Chrome",
        "$browser_version": 133,
        "$device_type": "Desktop",
        "$current_url": f"{APP}{pathname}{query}",
        "$host": "app.acme.example",
        "$pathname": pathname,
        "$screen_height": 1117,
        "$screen_width": 1728,
        "$viewport_height": 959,
        "$viewport_width": 1728,
        "$lib": "web",
        "$lib_version": "1.230.1",
        "$insert_id": event_uuid[-16:],
        "$time": round(at, 3),
        "$device_id": visitor.distinct_id,
        "$referrer": "$direct",
        "$referring_domain": "$direct",
        "$event_type": "click",
        "$ce_version": 1,
        "$session_id": visitor.session_id,
        "$window_id": visitor.window_id,
        "$is_identified": True,
        "$process_person_profile": True,
        "$ip": "203.0.113.42",
        "$geoip_country_code": "DE",
        "$sent_at": stamp,
    }
    return {
        "event": {
            "uuid": event_uuid,
            "event": "$autocapture",
            "distinct_id": visitor.distinct_id,
            "properties": properties,
            "elements_chain": chain,
            "timestamp": stamp,
            "url": f"https://eu.posthog.com/project/{PROJECT_ID}/events/{event_uuid}/"
            + quote(stamp, safe=""),
        },
        "person": {
            "id": visitor.person_id,
            "name": visitor.email,
            "properties": {"email": visitor.email, "$initial_browser": "Chrome"},
            "url": f"https://eu.posthog.com/project/{PROJECT_ID}/person/{visitor.distinct_id}",
        },
    }


def whsec_key(secret: str) -> bytes:
    """The key of a Standard Webhooks secret: the base64 after ``whsec_``."""
    prefix, _, encoded = secret.partition("_")
    if prefix != "whsec" or not encoded:
        raise ValueError("a Standard Webhooks secret is whsec_<base64>")
    return base64.b64decode(encoded, validate=True)


def sign(key: bytes, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks' ``v1,<base64 HMAC-SHA256>`` over ``<id>.<timestamp>.<body>``."""
    signed = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """One request of a pool: the Standard Webhooks headers' values and the body."""

    msg_id: str
    timestamp: int
    signature: str
    body: bytes

    def headers(self) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "webhook-id": self.msg_id,
            "webhook-timestamp": str(self.timestamp),
            "webhook-signature": self.signature,
        }

    def line(self) -> bytes:
        """The pool file's line for wrk_posthog.lua: the four fields, tab-separated."""
        if b"\t" in self.body or b"\n" in self.body:  # compact JSON escapes both
            raise ValueError("a pool line's body must hold no tab or newline")
        head = f"{self.msg_id}\t{self.timestamp}\t{self.signature}\t".encode()
        return head + self.body + b"\n"


def signed_requests(
    secret: str, people: Sequence[Visitor], count: int, *, now: float
) -> Iterator[SignedRequest]:
    """``count`` signed clicks, round-robin over ``people``, each with a new event uuid and
    ``webhook-id``, signed at ``now``; the events' timestamps step up to ``now``."""
    key = whsec_key(secret)
    timestamp = int(now)
    for n in range(count):
        event_uuid = str(uuid.uuid4())
        at = now - (count - n) * EVENT_SPACING_S
        event = autocapture_click(people[n % len(people)], event_uuid=event_uuid, at=at, click=n)
        body = json.dumps(event, separators=(",", ":")).encode()
        msg_id = f"msg_{event_uuid.replace('-', '')}"
        yield SignedRequest(
            msg_id, timestamp, sign(key, msg_id=msg_id, timestamp=timestamp, body=body), body
        )


def write_pool(path: Path, requests: Iterable[SignedRequest]) -> int:
    """The pool file wrk_posthog.lua reads; returns how many requests it holds."""
    written = 0
    with path.open("wb") as out:
        for request in requests:
            out.write(request.line())
            written += 1
    return written


def pool_size(rate_per_s: float, seconds: float, *, connections: int, threads: int) -> int:
    """Requests for a run of ``seconds`` at up to ``rate_per_s * POOL_MARGIN``, plus one in
    flight per connection and wrk's check of each thread's first request."""
    return math.ceil(rate_per_s * POOL_MARGIN * seconds) + connections + threads


@dataclass(frozen=True, slots=True)
class PosthogLoad:
    """What wrk sends: where, signed with which secret, for which sessions, how hard."""

    base_url: str
    product_id: str
    secret: str
    people: tuple[Visitor, ...]
    connections: int
    threads: int


def wrk_command(load: PosthogLoad, pool: Path, *, seconds: float) -> list[str]:
    return [
        *throughput.wrk_prefix(
            LUA_SCRIPT,
            load.base_url,
            connections=load.connections,
            threads=load.threads,
            seconds=seconds,
        ),
        f"/posthog/{load.product_id}",
        str(pool),
        str(load.threads),
    ]


def _pooled_run(
    load: PosthogLoad,
    pool: Path,
    *,
    seconds: float,
    rate_per_s: float,
    cpu: throughput.CpuProbe | None = None,
) -> dict[str, Any]:
    """Sign a pool for ``seconds`` at up to ``rate_per_s``, then run wrk over it; with ``cpu``,
    each process's CPU per request over the run (not the signing). wrk's CPU leaves out loading
    the pool, which its script reports (``pool.load_cpu_s``)."""
    count = pool_size(rate_per_s, seconds, connections=load.connections, threads=load.threads)
    started = time.monotonic()
    written = write_pool(pool, signed_requests(load.secret, load.people, count, now=time.time()))
    signing_s = time.monotonic() - started
    pool_bytes = pool.stat().st_size
    before = cpu() if cpu else {}
    command = wrk_command(load, pool, seconds=seconds)
    try:
        raw, wrk_cpu_s = throughput.run_wrk_command(command, seconds=seconds)
    finally:
        pool.unlink(missing_ok=True)
    result = throughput.wrk_summary(raw, command, max(0.0, wrk_cpu_s - raw["pool_load_cpu_s"]))
    if cpu:
        result["cpu"] = {
            **throughput.cpu_per_request(before, cpu(), result),
            "wrk": result.pop("wrk_cpu"),
        }
    result["pool"] = {
        "requests": written,
        "mib": round(pool_bytes / 2**20, 1),
        "body_bytes_mean": round(pool_bytes / written) if written else 0,
        "signing_s": round(signing_s, 2),
        "load_cpu_s": raw["pool_load_cpu_s"],
    }
    result["requests_built"] = raw["requests_built"]
    result["requests_repeated"] = raw["requests_repeated"]
    return result


def measure(
    load: PosthogLoad,
    *,
    warmup_s: float,
    seconds: float,
    expected_rate_per_s: float,
    workdir: Path,
    cpu: throughput.CpuProbe,
) -> dict[str, Any]:
    """A warm-up run (discarded), then the measured one, each over a pool of its own signed
    just before it starts: the warm-up's sized for ``expected_rate_per_s``, the measured run's
    for the faster of that and the warm-up's rate."""
    if max(warmup_s, seconds) > MAX_RUN_S:
        raise ValueError(
            f"B8 runs are limited to {MAX_RUN_S:.0f} s: their signatures expire after "
            f"{SIGNATURE_TOLERANCE_S:.0f} s"
        )
    warmup = _pooled_run(
        load, workdir / "b8-warmup.pool", seconds=warmup_s, rate_per_s=expected_rate_per_s
    )
    rate = max(expected_rate_per_s, warmup["requests_per_s"])
    result = _pooled_run(load, workdir / "b8.pool", seconds=seconds, rate_per_s=rate, cpu=cpu)
    result["warmup_requests"] = warmup["requests"]
    result["warmup_requests_repeated"] = warmup["requests_repeated"]
    result["warmup_errors"] = warmup["errors"]
    result["connections"] = load.connections
    result["wrk_threads"] = load.threads
    result["sessions"] = len(load.people)
    return result
