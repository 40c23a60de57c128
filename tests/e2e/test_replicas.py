"""Two service processes on one Redis (a server, then a cluster), with every request going to
either of them.

Each session sends a few batches before its link, a signed link webhook, then more batches, all
spread over both replicas by a small thread pool. Every action must reach the bot in exactly one
note, the at-link flush first, and a session's notes in the order of its actions.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from app.store import keys
from tests.conftest import HTTP_SECRET, INGEST_TOKEN, WEBHOOK_SECRET
from tests.e2e.conftest import Store
from tests.e2e.service import Bridge, bridge
from tests.fakes.bot import Attempt, FakeBot

PRODUCT = "duo"
SESSIONS = 40
WORKERS = 8
SEED = 5
T0 = 1_705_322_090.0
STEP_S = 0.25  # between a session's consecutive actions: sequence order is time order
DELIVERY_TIMEOUT_S = 20.0
QUIET_S = 0.6  # long enough for a stray duplicate note to show up

PRODUCTS = f"""
[products.{PRODUCT}]
platform = "http"
ingest_token = "{INGEST_TOKEN}"
post_link_debounce_s = 0.15
post_link_max_wait_s = 1.0
bin_seconds = 3

[products.{PRODUCT}.http]
url = "{{url}}"
signing_secret = "{HTTP_SECRET}"
webhook_secret = "{WEBHOOK_SECRET}"
"""


@dataclass
class SessionPlan:
    """What one session sends: batches of action descriptions before and after its link."""

    index: int
    pre: list[list[str]] = field(default_factory=list)
    post: list[list[str]] = field(default_factory=list)

    @property
    def session_id(self) -> str:
        return f"replica-s{self.index:02d}"

    @property
    def conversation_id(self) -> str:
        return f"conv-{self.index:02d}"

    def pre_actions(self) -> list[str]:
        return [d for b in self.pre for d in b]

    def all_actions(self) -> list[str]:
        return self.pre_actions() + [d for b in self.post for d in b]


def plan_sessions(rng: random.Random) -> list[SessionPlan]:
    plans = []
    for index in range(SESSIONS):
        plan, seq = SessionPlan(index), 0
        for batches, count in ((plan.pre, rng.randint(2, 3)), (plan.post, rng.randint(3, 5))):
            for _ in range(count):
                size = rng.randint(1, 3)
                batches.append([f"s{index:02d}-a{seq + k:03d}" for k in range(size)])
                seq += size
        plans.append(plan)
    return plans


def timestamp(description: str) -> float:
    return T0 + STEP_S * int(description.rsplit("-a", 1)[1])


def batch_body(plan: SessionPlan, descriptions: list[str]) -> dict[str, object]:
    actions = [{"description": d, "timestamp_start": timestamp(d)} for d in descriptions]
    return {"session_id": plan.session_id, "actions": actions}


def run_session(plan: SessionPlan, replicas: list[Bridge], seed: int) -> None:
    """Send one session's traffic in order; any request may go to either replica."""
    rng = random.Random(seed)
    first = rng.randrange(2)
    for i, descriptions in enumerate(plan.pre):
        r = replicas[(first + i) % 2].post_batch(PRODUCT, batch_body(plan, descriptions))
        assert r.status_code == 202, r.text
    rng.choice(replicas).link(PRODUCT, plan.session_id, plan.conversation_id)
    for descriptions in plan.post:
        r = rng.choice(replicas).post_batch(PRODUCT, batch_body(plan, descriptions))
        assert r.status_code == 202, r.text
        time.sleep(rng.uniform(0.0, 0.3))  # some batches coalesce, some start a new note


def descriptions(note: Attempt) -> list[str]:
    return [str(a["description"]) for a in note.payload["actions"]]


def wait_for_actions(bot: FakeBot, expected: set[str]) -> list[Attempt]:
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    while True:
        notes = bot.notes
        delivered = {d for note in notes for d in descriptions(note)}
        if expected <= delivered:
            time.sleep(QUIET_S)
            return bot.notes
        if time.monotonic() > deadline:
            missing = sorted(expected - delivered)
            raise AssertionError(f"{len(missing)} action(s) never delivered: {missing[:10]}")
        time.sleep(0.05)


def notes_by_session(notes: list[Attempt]) -> dict[str, list[Attempt]]:
    grouped: dict[str, list[Attempt]] = defaultdict(list)
    for note in sorted(notes, key=lambda n: n.received_at):
        grouped[str(note.payload["session_id"])].append(note)
    return grouped


def assert_each_action_once(notes: list[Attempt], expected: set[str]) -> None:
    seen = Counter(d for note in notes for d in descriptions(note))
    repeated = sorted(d for d, copies in seen.items() if copies > 1)
    assert not repeated, f"actions in more than one note: {repeated[:10]}"
    assert set(seen) == expected


def assert_no_duplicate_notes(notes: list[Attempt]) -> None:
    webhook_ids = [n.webhook_id for n in notes]
    assert len(set(webhook_ids)) == len(webhook_ids), "a note was delivered twice"
    bodies = [(n.payload["session_id"], n.payload["body"]) for n in notes]
    assert len(set(bodies)) == len(bodies), "two notes of a session have the same body"


def assert_session_order(plan: SessionPlan, notes: list[Attempt]) -> None:
    flush, *post_link = notes
    assert descriptions(flush) == plan.pre_actions(), plan.session_id
    after = [d for note in post_link for d in descriptions(note)]
    times = [timestamp(d) for d in after]
    assert times == sorted(times), f"{plan.session_id}: post-link notes out of order: {after}"
    assert all(n.payload["conversation_id"] == plan.conversation_id for n in notes)


@pytest.fixture
def replicas(store: Store, bot: FakeBot, tmp_path: Path) -> Iterator[list[Bridge]]:
    products_file = tmp_path / "products.toml"
    products_file.write_text(PRODUCTS.format(url=bot.url))
    common = {"redis_url": store.url, "products_file": products_file, **store.env}
    with (
        bridge(log_path=tmp_path / "a.log", **common) as a,  # type: ignore[arg-type]
        bridge(log_path=tmp_path / "b.log", **common) as b,  # type: ignore[arg-type]
    ):
        yield [a, b]


def assert_sessions_on_every_primary(cluster: redis.RedisCluster, plans: list[SessionPlan]) -> None:
    """The sessions' keys spread over every primary, and over many of the 64 shards."""
    holders = Counter()
    for plan in plans:
        state = keys.session_keys(PRODUCT, plan.session_id).state
        node = cluster.get_node_from_key(state)
        assert cluster.exists(state), plan.session_id
        holders[node.name] += 1
    primaries = {node.name for node in cluster.get_primaries()}
    assert set(holders) == primaries, holders
    shards = {keys.shard_of(PRODUCT, plan.session_id) for plan in plans}
    assert len(shards) >= len(plans) // 2


@pytest.mark.timeout(90)
def test_two_replicas_deliver_every_action_once_and_in_order(
    replicas: list[Bridge], bot: FakeBot, store: Store
) -> None:
    rng = random.Random(SEED)
    plans = plan_sessions(rng)
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = [pool.submit(run_session, p, replicas, rng.randrange(2**32)) for p in plans]
        for future in futures:
            future.result()

    expected = {d for plan in plans for d in plan.all_actions()}
    notes = wait_for_actions(bot, expected)

    assert bot.rejected == 0
    for replica in replicas:  # both workers took part
        assert any('"note_delivered"' in line for line in replica.log_events())
    assert all(a.status == 200 for a in bot.attempts)
    assert_each_action_once(notes, expected)
    assert_no_duplicate_notes(notes)
    grouped = notes_by_session(notes)
    assert set(grouped) == {p.session_id for p in plans}
    for plan in plans:
        assert_session_order(plan, grouped[plan.session_id])
    if store.cluster is not None:
        assert_sessions_on_every_primary(store.cluster, plans)
