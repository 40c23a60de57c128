"""A Redis outage: intake answers 503, nothing accepted is lost, and the service recovers alone."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import HTTP_SECRET, WEBHOOK_SECRET, batch, free_port, start_redis_server
from tests.e2e.service import bridge
from tests.fakes.bot import FakeBot

T0 = 1_705_322_090.0

PRODUCTS = """
[products.acme]
platform = "http"
ingest_token = "ingest-token-0123456789"
post_link_debounce_s = 1.0
post_link_max_wait_s = 5

[products.acme.http]
url = "{url}"
signing_secret = "{signing}"
webhook_secret = "{webhook}"
"""


def wait_until(check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.mark.timeout(90)
def test_intake_refuses_during_an_outage_and_delivery_resumes_after(
    bot: FakeBot, tmp_path: Path
) -> None:
    port = free_port()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    redis_proc = start_redis_server(port, workdir=str(redis_dir), appendonly=True)
    products = tmp_path / "products.toml"
    products.write_text(PRODUCTS.format(url=bot.url, signing=HTTP_SECRET, webhook=WEBHOOK_SECRET))
    try:
        with bridge(
            redis_url=f"redis://127.0.0.1:{port}/0",
            products_file=products,
            log_path=tmp_path / "bridge.log",
        ) as service:
            service.link("acme", "s1", "c1")
            # Accepted just before the outage, due 1 s later: during it.
            assert service.post_batch("acme", batch("s1", ("before", T0))).status_code == 202
            redis_proc.terminate()
            redis_proc.wait(timeout=10)

            refused = service.post_batch("acme", batch("s1", ("during", T0 + 1)))
            assert refused.status_code == 503
            assert refused.json()["error"] == "store_unavailable"
            assert refused.headers["retry-after"]
            assert service.client.get("/readyz").status_code == 503
            time.sleep(1.5)  # the note falls due while Redis is away
            assert bot.attempts == []

            redis_proc = start_redis_server(port, workdir=str(redis_dir), appendonly=True)
            wait_until(lambda: service.client.get("/readyz").status_code == 200, 15)
            (note,) = bot.wait_for_notes(1, timeout_s=15)
            assert note.payload["body"].endswith("\n\n[1] before")
            assert service.post_batch("acme", batch("s1", ("after", T0 + 2))).status_code == 202
            second = bot.wait_for_notes(2, timeout_s=15)[1]
            assert second.payload["body"].endswith("\n\n[1] after")
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
