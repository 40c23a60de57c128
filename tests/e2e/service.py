"""Run the real service (``python -m app serve``) as a subprocess for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import INGEST_TOKEN, free_port
from tests.harness import signed_webhook

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 40


@dataclass
class Bridge:
    """A running service process and a client for it."""

    proc: subprocess.Popen[bytes]
    client: httpx.Client
    log_path: Path

    def post_batch(self, product_id: str, body: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {INGEST_TOKEN}"}
        return self.client.post(f"/actions/{product_id}", json=body, headers=headers)

    def post_webhook(self, product_id: str, body: dict[str, Any]) -> httpx.Response:
        raw, headers = signed_webhook(body, now=time.time())
        return self.client.post(f"/chatbot-webhook/{product_id}", content=raw, headers=headers)

    def link(self, product_id: str, session_id: str, conversation_id: str) -> None:
        body = {
            "event": "conversation.created",
            "conversation_id": conversation_id,
            "session_id": session_id,
        }
        r = self.post_webhook(product_id, body)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "linked"

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no shutdown hook runs
        self.proc.wait(timeout=STOP_TIMEOUT_S)

    def log_events(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()


def _bridge_env(
    *, port: int, redis_url: str, products_file: Path, extra: dict[str, str]
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        BRIDGE_HOST="127.0.0.1",
        BRIDGE_PORT=str(port),
        BRIDGE_REDIS_URL=redis_url,
        BRIDGE_PRODUCTS_FILE=str(products_file),
        BRIDGE_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def _wait_ready(proc: subprocess.Popen[bytes], client: httpx.Client) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with code {proc.returncode}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the service was not ready within {READY_TIMEOUT_S} s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if the process has not exited in time."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


def _print_tail(log_path: Path) -> None:
    lines = log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    print(f"--- last {len(lines)} lines of {log_path.name} ---", *lines, sep="\n")


@contextmanager
def bridge(
    *, redis_url: str, products_file: Path, log_path: Path, **extra_env: str
) -> Iterator[Bridge]:
    """Run ``python -m app serve`` until the block ends; print its log tail if the block fails."""
    port = free_port()
    env = _bridge_env(port=port, redis_url=redis_url, products_file=products_file, extra=extra_env)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "serve"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0) as client:
            _wait_ready(proc, client)
            yield Bridge(proc, client, log_path)
    except BaseException:
        _print_tail(log_path)
        raise
    finally:
        stop_process(proc)
