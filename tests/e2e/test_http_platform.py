"""The real service (``python -m app serve``) over a real Redis, posting to a fake bot.

Each test starts the service as a subprocess and drives it over HTTP, so what is checked here
is what a deployment does: wiring, the background worker, retries and restart recovery.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    HTTP_SECRET,
    INGEST_TOKEN,
    WEBHOOK_SECRET,
    batch,
)
from tests.e2e.service import Bridge, bridge
from tests.fakes.bot import Attempt, FakeBot
from tests.harness import signed_webhook

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 40
# Long enough for a note that should not exist to show up (debounce 0.2 s plus a worker turn).
QUIET_S = 0.6
T0 = 1_705_322_090.0  # 2024-01-15 12:34:50 UTC; a 3-second bin starts at T0 + 1

PRODUCT_TOML = """
[products.{id}]
platform = "http"
ingest_token = "{token}"
post_link_debounce_s = {debounce}
post_link_max_wait_s = 2.0
bin_seconds = 3

[products.{id}.http]
url = "{url}"
signing_secret = "{signing}"
webhook_secret = "{webhook}"
"""


def write_products(path: Path, bot_url: str) -> Path:
    """``acme`` debounces for 0.2 s, ``slow`` for 1 s (time to kill the service first)."""
    text = "".join(
        PRODUCT_TOML.format(
            id=product_id,
            token=INGEST_TOKEN,
            debounce=debounce,
            url=bot_url,
            signing=HTTP_SECRET,
            webhook=WEBHOOK_SECRET,
        )
        for product_id, debounce in (("acme", 0.2), ("slow", 1.0))
    )
    path.write_text(text)
    return path


@pytest.fixture
def products_file(tmp_path: Path, bot: FakeBot) -> Path:
    return write_products(tmp_path / "products.toml", bot.url)


@pytest.fixture
def service(clean_redis: str, products_file: Path, tmp_path: Path) -> Iterator[Bridge]:
    with bridge(
        redis_url=clean_redis, products_file=products_file, log_path=tmp_path / "bridge.log"
    ) as running:
        yield running


def descriptions(note: Attempt) -> list[str]:
    return [action["description"] for action in note.payload["actions"]]


def without_body_and_actions(note: Attempt) -> dict[str, Any]:
    return {k: v for k, v in note.payload.items() if k not in ("body", "actions")}


def test_fake_bot_rejects_unsigned_notes(bot: FakeBot) -> None:
    raw, headers = signed_webhook({"type": "note"}, now=time.time(), secret=WEBHOOK_SECRET)
    r = httpx.post(bot.url, content=raw, headers=headers)
    assert r.status_code == 401
    assert bot.rejected == 1
    assert bot.attempts == []


@pytest.mark.timeout(60)
def test_prelink_flush_then_one_debounced_note(service: Bridge, bot: FakeBot) -> None:
    r = service.post_batch(
        "acme", batch("s1", ("A", T0), ("B", T0 + 0.5), ("C", T0 + 1.2), user_id="u1")
    )
    assert r.status_code == 202, r.text
    assert r.json() == {"status": "accepted", "accepted": 3, "duplicates": 0, "linked": False}
    time.sleep(QUIET_S)
    assert bot.attempts == []  # unlinked: kept, not sent

    body = {"event": "conversation.created", "conversation_id": "c1", "user_id": "u1"}
    r = service.post_webhook("acme", body)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "linked", "session_id": "s1", "conversation_id": "c1"}
    # D and E straddle a bin boundary: a post-link note must not show it.
    assert service.post_batch("acme", batch("s1", ("D", T0 + 9))).status_code == 202
    time.sleep(0.05)
    assert service.post_batch("acme", batch("s1", ("E", T0 + 10))).status_code == 202

    flush, debounced = bot.wait_for_notes(2, timeout_s=5)
    time.sleep(QUIET_S)
    assert len(bot.notes) == 2
    expected_head = {
        "type": "note",
        "product_id": "acme",
        "session_id": "s1",
        "conversation_id": "c1",
        "kind": "actions",
    }
    assert without_body_and_actions(flush) == expected_head
    assert flush.payload["body"] == (
        "session_id: s1\ntimestamp: 2024-01-15 12:34:50 UTC\n\n[1] A\n[2] B\n\n[3] C"
    )
    assert descriptions(flush) == ["A", "B", "C"]
    assert without_body_and_actions(debounced) == expected_head
    assert debounced.payload["body"] == (
        "session_id: s1\ntimestamp: 2024-01-15 12:34:59 UTC\n\n[1] D\n[2] E"
    )
    assert descriptions(debounced) == ["D", "E"]
    assert flush.webhook_id and debounced.webhook_id
    assert flush.webhook_id != debounced.webhook_id
    assert bot.rejected == 0


@pytest.mark.timeout(60)
def test_outage_is_retried_until_the_note_arrives_once(service: Bridge, bot: FakeBot) -> None:
    service.link("acme", "s2", "c2")
    bot.fail_next(2, status=503)

    r = service.post_batch("acme", batch("s2", ("X", T0), ("Y", T0 + 1)))
    assert r.status_code == 202, r.text
    assert r.json()["linked"] is True

    (note,) = bot.wait_for_notes(1, timeout_s=8)
    time.sleep(QUIET_S)
    assert len(bot.notes) == 1
    assert (
        note.payload["body"] == "session_id: s2\ntimestamp: 2024-01-15 12:34:50 UTC\n\n[1] X\n[2] Y"
    )
    assert descriptions(note) == ["X", "Y"]
    attempts = bot.attempts
    assert [a.status for a in attempts] == [503, 503, 200]
    # One note, retried: the same idempotency key every time.
    assert {a.webhook_id for a in attempts} == {note.webhook_id}
    # Backoff 0.5 s then 1 s, each jittered down to at most half.
    gaps = [
        later.received_at - earlier.received_at for earlier, later in itertools.pairwise(attempts)
    ]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.45, gaps


@pytest.mark.timeout(60)
def test_note_survives_a_killed_process(
    clean_redis: str, products_file: Path, tmp_path: Path, bot: FakeBot
) -> None:
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with bridge(redis_url=clean_redis, products_file=products_file, log_path=first_log) as first:
        first.link("slow", "s3", "c3")
        r = first.post_batch("slow", batch("s3", ("P", T0), ("Q", T0 + 0.4)))
        assert r.status_code == 202, r.text
        assert r.json()["linked"] is True
        first.kill()  # well inside the 1 s debounce
    assert bot.attempts == []

    with bridge(redis_url=clean_redis, products_file=products_file, log_path=second_log) as second:
        (note,) = bot.wait_for_notes(1, timeout_s=10)
        time.sleep(QUIET_S)
        assert len(bot.attempts) == 1
        assert note.payload["session_id"] == "s3"
        assert note.payload["conversation_id"] == "c3"
        assert note.payload["body"] == (
            "session_id: s3\ntimestamp: 2024-01-15 12:34:50 UTC\n\n[1] P\n[2] Q"
        )
        delivered = [line for line in second.log_events() if '"note_delivered"' in line]
        assert len(delivered) == 1 and '"s3"' in delivered[0]
