"""SIGTERM: intake and readiness turn 503, due notes go out, later ones wait in Redis."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.conftest import HTTP_SECRET, WEBHOOK_SECRET, batch
from tests.e2e.service import STOP_TIMEOUT_S, Bridge, bridge
from tests.fakes.bot import FakeBot

T0 = 1_705_322_090.0

PRODUCTS = """
[products.drain]
platform = "http"
ingest_token = "ingest-token-0123456789"
post_link_debounce_s = {debounce}
post_link_max_wait_s = 10

[products.drain.http]
url = "{url}"
signing_secret = "{signing}"
webhook_secret = "{webhook}"
"""


def products_file(path: Path, bot: FakeBot, *, debounce: float) -> Path:
    path.write_text(
        PRODUCTS.format(debounce=debounce, url=bot.url, signing=HTTP_SECRET, webhook=WEBHOOK_SECRET)
    )
    return path


def terminate(service: Bridge) -> None:
    service.proc.send_signal(signal.SIGTERM)


def wait_exit(service: Bridge) -> int:
    return service.proc.wait(timeout=STOP_TIMEOUT_S)


@pytest.mark.timeout(60)
def test_sigterm_drains_due_notes_and_refuses_new_work(
    clean_redis: str, bot: FakeBot, tmp_path: Path
) -> None:
    path = products_file(tmp_path / "p.toml", bot, debounce=1.0)
    with bridge(
        redis_url=clean_redis,
        products_file=path,
        log_path=tmp_path / "b.log",
        BRIDGE_SHUTDOWN_GRACE_S="5",
    ) as service:
        service.link("drain", "s1", "c1")
        assert service.post_batch("drain", batch("s1", ("A", T0))).status_code == 202
        terminate(service)
        time.sleep(0.2)
        ready = service.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["intake"] == "draining"
        refused = service.post_batch("drain", batch("s1", ("B", T0 + 1)))
        assert refused.status_code == 503
        assert refused.json()["error"] == "shutting_down"
        assert "retry-after" in refused.headers
        assert wait_exit(service) == 0
    assert [n.payload["body"].rsplit("\n", 1)[-1] for n in bot.notes] == ["[1] A"]


@pytest.mark.timeout(60)
def test_notes_due_after_the_grace_period_wait_for_the_next_process(
    clean_redis: str, bot: FakeBot, tmp_path: Path
) -> None:
    path = products_file(tmp_path / "p.toml", bot, debounce=3.0)
    with bridge(
        redis_url=clean_redis,
        products_file=path,
        log_path=tmp_path / "first.log",
        BRIDGE_SHUTDOWN_GRACE_S="0.5",
    ) as first:
        first.link("drain", "s1", "c1")
        assert first.post_batch("drain", batch("s1", ("A", T0))).status_code == 202
        started = time.monotonic()
        terminate(first)
        assert wait_exit(first) == 0
        assert time.monotonic() - started < 2.5  # it did not wait for the 3 s debounce
    assert bot.attempts == []
    with bridge(redis_url=clean_redis, products_file=path, log_path=tmp_path / "second.log"):
        (note,) = bot.wait_for_notes(1, timeout_s=10)
    assert note.payload["body"].endswith("\n\n[1] A")
