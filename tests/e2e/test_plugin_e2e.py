"""A platform adapter from outside this repository works after ``pip install`` alone.

tests/plugins/demo_platform is a third-party package in miniature: its own pyproject, an entry
point under ``chatbot_bridge.platforms``, a config model, and webhooks that are forms, not
JSON. The test installs it with pip into a directory of its own (the test environment is left
as it was), then runs ``check-config`` and the real service with that directory on the path:
a form-encoded webhook links a session and its flush note reaches the demo platform.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.conftest import INGEST_TOKEN, batch
from tests.e2e.service import REPO_ROOT, bridge
from tests.fakes.server import serve_in_thread

PACKAGE = Path(__file__).resolve().parents[1] / "plugins" / "demo_platform"
TOKEN = "demo-webhook-token-0123456789"
T0 = 1_705_322_090.0  # 2024-01-15 12:34:50 UTC

PRODUCTS_TOML = """
[products.acme]
platform = "demo"
ingest_token = "{ingest_token}"
post_link_debounce_s = 0.1

[products.acme.demo]
url = "{url}"
webhook_secret = "{token}"
"""


class DemoNotes:
    """The demo platform's note endpoint: records what it is sent."""

    def __init__(self) -> None:
        self.notes: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.app = Starlette(routes=[Route("/notes", self.receive, methods=["POST"])])

    async def receive(self, request: Request) -> JSONResponse:
        with self.lock:
            self.notes.append(json.loads(await request.body()))
            return JSONResponse({"id": f"demo-{len(self.notes)}"})

    def wait_for(self, count: int, timeout_s: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while len(self.notes) < count:
            assert time.monotonic() < deadline, f"expected {count} note(s), got {self.notes}"
            time.sleep(0.02)
        return list(self.notes)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo package, installed by pip into a directory of its own."""
    source = tmp_path_factory.mktemp("source") / "demo_platform"
    shutil.copytree(PACKAGE, source)  # pip may build in place: keep the repository clean
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            target,
            source,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return target


def with_site(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(site), str(REPO_ROOT)])}


def check_config(site: Path | None, products: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    if site is not None:
        env.update(with_site(site))
    return subprocess.run(
        [sys.executable, "-m", "app", "check-config", "--file", str(products)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_products(path: Path, notes_url: str, *, typo: bool = False) -> Path:
    text = PRODUCTS_TOML.format(ingest_token=INGEST_TOKEN, url=notes_url, token=TOKEN)
    if typo:
        text = text.replace("\nurl = ", "\nurll = ")
    path.write_text(text)
    return path


@pytest.mark.timeout(180)
def test_check_config_knows_the_installed_adapter_and_its_keys(site: Path, tmp_path: Path) -> None:
    good = write_products(tmp_path / "good.toml", "https://demo.example/notes")
    assert check_config(site, good).returncode == 0
    without = check_config(None, good)
    assert without.returncode == 1
    assert "no platform adapter is registered as 'demo'" in without.stderr + without.stdout
    typo = write_products(tmp_path / "typo.toml", "https://demo.example/notes", typo=True)
    checked = check_config(site, typo)
    assert checked.returncode == 1
    assert "products.acme.demo.urll: unknown key (did you mean 'url'?)" in (
        checked.stderr + checked.stdout
    )


@pytest.fixture
def notes() -> Iterator[tuple[DemoNotes, str]]:
    fake = DemoNotes()
    with serve_in_thread(fake.app, name="demo platform") as base_url:
        yield fake, f"{base_url}/notes"


@pytest.mark.timeout(180)
def test_a_form_webhook_links_and_the_note_reaches_the_installed_adapter(
    site: Path, clean_redis: str, tmp_path: Path, notes: tuple[DemoNotes, str]
) -> None:
    fake, url = notes
    products = write_products(tmp_path / "products.toml", url)
    with bridge(
        redis_url=clean_redis,
        products_file=products,
        log_path=tmp_path / "bridge.log",
        **with_site(site),
    ) as service:
        r = service.post_batch("acme", batch("s1", ("User opened the demo", T0)))
        assert r.status_code == 202, r.text
        form = "event=conversation.created&conversation_id=demo-c1&session_id=s1"
        headers = {"content-type": "application/x-www-form-urlencoded"}
        r = service.client.post("/chatbot-webhook/acme", content=form, headers=headers)
        assert r.status_code == 401  # no X-Demo-Token
        r = service.client.post(
            "/chatbot-webhook/acme", content=form, headers={**headers, "x-demo-token": TOKEN}
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "linked", "session_id": "s1", "conversation_id": "demo-c1"}
        r = service.client.post(
            "/chatbot-webhook/acme",
            json={"event": "conversation.created"},
            headers={"x-demo-token": TOKEN},
        )
        assert r.status_code == 415
        assert "application/x-www-form-urlencoded" in r.json()["detail"]
        (note,) = fake.wait_for(1, timeout_s=10)
    assert note == {
        "conversation_id": "demo-c1",
        "text": "session_id: s1\ntimestamp: 2024-01-15 12:34:50 UTC\n\n[1] User opened the demo",
    }
