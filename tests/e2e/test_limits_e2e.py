"""Outbound limits in the real service: a note budget shared by two replicas, and one product's
hanging platform that must not slow the others down.

The bridge runs as subprocesses (``python -m app serve``) over a real Redis (a server, then a
3-primary cluster, for the shared budget), posting to fake bots that record when each note
arrived (``time.monotonic()``).
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import HTTP_SECRET, INGEST_TOKEN, WEBHOOK_SECRET
from tests.e2e.conftest import Store
from tests.e2e.service import Bridge, bridge
from tests.fakes.bot import Attempt, FakeBot, running_bot

T0 = 1_705_322_090.0
DEBOUNCE_S = 0.1
QUIET_S = 0.6  # long enough for a note that should not exist to show up

PRODUCT_TOML = """
[products.{id}]
platform = "http"
ingest_token = "{token}"
post_link_debounce_s = {debounce}
post_link_max_wait_s = 1.0
{limits}

[products.{id}.http]
url = "{url}"
signing_secret = "{signing}"
webhook_secret = "{webhook}"
"""


def product_toml(product_id: str, url: str, limits: str) -> str:
    return PRODUCT_TOML.format(
        id=product_id,
        token=INGEST_TOKEN,
        debounce=DEBOUNCE_S,
        limits=limits,
        url=url,
        signing=HTTP_SECRET,
        webhook=WEBHOOK_SECRET,
    )


def descriptions(note: Attempt) -> list[str]:
    return [str(a["description"]) for a in note.payload["actions"]]


def actions_body(session_id: str, names: list[str]) -> dict[str, object]:
    actions = [{"description": d, "timestamp_start": T0 + i} for i, d in enumerate(names)]
    return {"session_id": session_id, "actions": actions}


def wait_for_actions(bot: FakeBot, expected: set[str], timeout_s: float) -> list[Attempt]:
    """Until every expected action is in an accepted note, then a quiet spell; the notes."""
    deadline = time.monotonic() + timeout_s
    while not expected <= {d for note in bot.notes for d in descriptions(note)}:
        if time.monotonic() > deadline:
            delivered = {d for note in bot.notes for d in descriptions(note)}
            missing = sorted(expected - delivered)
            raise AssertionError(f"{len(missing)} action(s) never delivered: {missing[:10]}")
        time.sleep(0.05)
    time.sleep(QUIET_S)
    return bot.notes


def assert_each_action_once(notes: list[Attempt], expected: set[str]) -> None:
    seen = Counter(d for note in notes for d in descriptions(note))
    repeated = sorted(d for d, copies in seen.items() if copies > 1)
    assert not repeated, f"actions in more than one note: {repeated[:10]}"
    assert set(seen) == expected


def metric_total(replica: Bridge, name: str) -> float:
    text = replica.client.get("/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


# -- two replicas share one product's note budget --------------------------------------------

CAPPED = "capped"
PER_MINUTE = 120
BURST = PER_MINUTE // 10  # NoteBudget.of: 10 % of a minute's notes
INTERVAL_S = 60 / PER_MINUTE
# The budget bounds the grants, taken at each claim round: in any span of W seconds at most
# BURST + W / INTERVAL_S. A note reaches the bot some time after its grant (the rest of the
# claim round, building the note, the loopback post); those delays differ by a few ms to tens
# of ms, and as long as they differ by less than one interval (0.5 s) they fit at most one
# more note into a window of arrivals than into the same window of grants.
JITTER_NOTES = 1
CAPPED_SESSIONS = 30
# While the first notes go out, more batches go to the sessions still held back, every so often.
LATE_WAVES_AT_S = (1.0, 3.0)
CAPPED_TIMEOUT_S = 25.0


@pytest.fixture
def capped_replicas(store: Store, bot: FakeBot, tmp_path: Path) -> Iterator[list[Bridge]]:
    products_file = tmp_path / "products.toml"
    limits = f"max_notes_per_minute = {PER_MINUTE}"
    products_file.write_text(product_toml(CAPPED, bot.url, limits))
    common = {"redis_url": store.url, "products_file": products_file, **store.env}
    with (
        bridge(log_path=tmp_path / "a.log", **common) as a,  # type: ignore[arg-type]
        bridge(log_path=tmp_path / "b.log", **common) as b,  # type: ignore[arg-type]
    ):
        yield [a, b]


def capped_session(index: int) -> str:
    return f"capped-{index:02d}"


def envelope_violations(arrivals: list[float]) -> list[tuple[int, float, int]]:
    """Windows of arrivals holding more notes than the budget allows: (first note's index,
    window length, notes in it)."""
    times = sorted(arrivals)
    found = []
    for i, j in itertools.combinations(range(len(times)), 2):
        window_s, count = times[j] - times[i], j - i + 1
        if count > BURST + window_s / INTERVAL_S + JITTER_NOTES:
            found.append((i, round(window_s, 3), count))
    return found


@pytest.mark.timeout(60)
def test_two_replicas_share_one_note_budget(
    capped_replicas: list[Bridge], bot: FakeBot, store: Store
) -> None:
    rng = random.Random(7)
    sessions = [capped_session(i) for i in range(CAPPED_SESSIONS)]
    for index, session_id in enumerate(sessions):
        capped_replicas[index % 2].link(CAPPED, session_id, f"conv-{session_id}")
    sent: dict[str, list[str]] = {sid: [] for sid in sessions}  # actions sent, by session
    batches = 0

    def send(session_id: str, wave: int) -> None:
        nonlocal batches
        names = [f"{session_id}-w{wave}-a{k}" for k in range(rng.randint(1, 3))]
        r = rng.choice(capped_replicas).post_batch(CAPPED, actions_body(session_id, names))
        assert r.status_code == 202, r.text
        assert r.json()["linked"] is True
        sent[session_id].extend(names)
        batches += 1

    begun = time.monotonic()
    for session_id in sessions:
        send(session_id, 0)
    for wave, at_s in enumerate(LATE_WAVES_AT_S, start=1):
        time.sleep(max(0.0, begun + at_s - time.monotonic()))
        posted = {str(note.payload["session_id"]) for note in bot.notes}
        for session_id in sessions:
            if session_id not in posted:  # held back by the budget, still collecting
                send(session_id, wave)
    late_batches = batches - CAPPED_SESSIONS

    expected = {d for names in sent.values() for d in names}
    notes = wait_for_actions(bot, expected, CAPPED_TIMEOUT_S)

    assert bot.rejected == 0
    assert all(a.status == 200 for a in bot.attempts)
    # (ii) nothing lost, nothing twice
    assert_each_action_once(notes, expected)
    # (i) the arrivals stay inside the budget's envelope, over every window
    arrivals = [note.received_at for note in notes]
    violations = envelope_violations(arrivals)
    assert not violations, f"{len(violations)} windows over the budget, e.g. {violations[:5]}"
    # ...and the budget was what paced them: past the burst, about one note per interval
    span_s = max(arrivals) - min(arrivals)
    assert span_s >= (len(notes) - BURST - JITTER_NOTES) * INTERVAL_S, (len(notes), span_s)
    # (iii) the late batches joined the notes of the sessions held back
    assert late_batches >= CAPPED_SESSIONS // 2, "the budget held too few sessions back"
    assert len(notes) < batches, (len(notes), batches)
    coalesced = [n for n in notes if len({d.rsplit("-a", 1)[0] for d in descriptions(n)}) > 1]
    assert len(coalesced) >= CAPPED_SESSIONS // 3, len(coalesced)
    # Both replicas took part, and each held sessions back
    for replica in capped_replicas:
        assert any('"note_delivered"' in line for line in replica.log_events())
        assert metric_total(replica, "bridge_notes_throttled_total") > 0


# -- one product's hanging platform does not hold the others back ----------------------------

SLOW, FAST = "slow", "fast"
SLOW_DELAY_S = 2.0
SLOW_CAP = 16
SLOW_SESSIONS = 80
FAST_SESSIONS = 30
FAST_EVERY_S = 0.15
# A fast note is posted the debounce after its batch; the rest is a worker turn and loopback.
FAST_LATENCY_BUDGET_S = DEBOUNCE_S + 0.5
FAIRNESS_TIMEOUT_S = 30.0


@pytest.fixture
def slow_bot() -> Iterator[FakeBot]:
    with running_bot(HTTP_SECRET, delay_s=SLOW_DELAY_S) as fake:
        yield fake


@pytest.fixture
def two_platforms(
    clean_redis: str, bot: FakeBot, slow_bot: FakeBot, tmp_path: Path
) -> Iterator[Bridge]:
    products_file = tmp_path / "products.toml"
    products_file.write_text(
        product_toml(SLOW, slow_bot.url, f"max_notes_in_flight = {SLOW_CAP}")
        + product_toml(FAST, bot.url, "")
    )
    with bridge(
        redis_url=clean_redis, products_file=products_file, log_path=tmp_path / "bridge.log"
    ) as running:
        yield running


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


@pytest.mark.timeout(60)
def test_a_hanging_platform_does_not_delay_other_products(
    two_platforms: Bridge, bot: FakeBot, slow_bot: FakeBot
) -> None:
    service = two_platforms
    fast_sessions = [f"fast-{i:02d}" for i in range(FAST_SESSIONS)]
    for session_id in fast_sessions:
        service.link(FAST, session_id, f"conv-{session_id}")

    # 80 slow sessions linked by their first batch: 80 at-link flushes due at once.
    slow_expected = set()
    for i in range(SLOW_SESSIONS):
        session_id = f"slow-{i:02d}"
        names = [f"{session_id}-a0", f"{session_id}-a1"]
        body = {**actions_body(session_id, names), "conversation_id": f"conv-{session_id}"}
        r = service.post_batch(SLOW, body)
        assert r.status_code == 202, r.text
        slow_expected.update(names)
    deadline = time.monotonic() + 5.0
    while slow_bot.max_concurrent < SLOW_CAP:
        assert time.monotonic() < deadline, f"slow's platform holds {slow_bot.max_concurrent}"
        time.sleep(0.02)

    # While slow's notes hang: one batch per fast session, each timed from its 202.
    sent_at: dict[str, float] = {}
    answered_at: dict[str, float] = {}
    for session_id in fast_sessions:
        name = f"{session_id}-a0"
        sent_at[name] = time.monotonic()
        r = service.post_batch(FAST, actions_body(session_id, [name]))
        answered_at[name] = time.monotonic()
        assert r.status_code == 202, r.text
        time.sleep(FAST_EVERY_S)

    fast_notes = wait_for_actions(bot, set(answered_at), FAIRNESS_TIMEOUT_S)
    arrived = {d: note.received_at for note in fast_notes for d in descriptions(note)}
    latencies = [arrived[d] - answered_at[d] for d in answered_at]
    slow_notes = wait_for_actions(slow_bot, slow_expected, FAIRNESS_TIMEOUT_S)

    assert_each_action_once(fast_notes, set(answered_at))
    assert len(fast_notes) == FAST_SESSIONS
    p99 = percentile(latencies, 0.99)
    assert p99 < FAST_LATENCY_BUDGET_S, sorted(round(x, 3) for x in latencies)
    # Debounced, not skipped: no note before the debounce after its batch was sent (the
    # bridge keeps due times in whole ms).
    assert all(arrived[d] - sent_at[d] >= DEBOUNCE_S - 0.002 for d in sent_at)
    # Every fast note was measured while slow's platform still held notes.
    assert max(n.received_at for n in fast_notes) < max(n.received_at for n in slow_notes)
    # slow: every note eventually, each once, never more than its cap at once
    assert_each_action_once(slow_notes, slow_expected)
    assert all(a.status == 200 for a in slow_bot.attempts)
    assert slow_bot.max_concurrent == SLOW_CAP
