"""What one client may hold of the real service: raw sockets against ``python -m app serve``.

Each test starts the service with small limits so that a deadline passes in about a second.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, suppress
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HTTP_SECRET, INGEST_TOKEN, WEBHOOK_SECRET
from tests.e2e.service import Bridge, bridge

PRODUCTS_TOML = f"""
[products.acme]
platform = "http"
ingest_token = "{INGEST_TOKEN}"

[products.acme.http]
url = "http://127.0.0.1:9/notes"
signing_secret = "{HTTP_SECRET}"
webhook_secret = "{WEBHOOK_SECRET}"
"""
IO_TIMEOUT_S = 5.0
# A deadline of 1 s must fire after 1 s, and well before the 5 s the defaults would give.
LATE_S = 3.0

Start = Callable[..., Bridge]


@pytest.fixture
def start(clean_redis: str, tmp_path: Path) -> Iterator[Start]:
    """Starts the service with the given ``BRIDGE_*`` settings (once per test)."""
    products = tmp_path / "products.toml"
    products.write_text(PRODUCTS_TOML)
    log_path = tmp_path / "bridge.log"
    with ExitStack() as stack:

        def _start(**env: str) -> Bridge:
            running = bridge(
                redis_url=clean_redis, products_file=products, log_path=log_path, **env
            )
            return stack.enter_context(running)

        yield _start


def port_of(service: Bridge) -> int:
    port = service.client.base_url.port
    assert port is not None
    return port


def connect(service: Bridge) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port_of(service)), timeout=IO_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a content-length (what the service sends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed in the middle of a body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def closed_within(sock: socket.socket, timeout_s: float) -> bool:
    """True when the server closes the connection (EOF or reset) within ``timeout_s``."""
    sock.settimeout(timeout_s)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bridge\r\n\r\n".encode()


def healthz_seconds(service: Bridge) -> float:
    started = time.monotonic()
    with closing(connect(service)) as sock:
        sock.sendall(get("/healthz"))
        status, _, _ = read_response(sock)
    assert status == 200
    return time.monotonic() - started


def test_a_trickled_body_gets_408_and_the_connection_is_closed(start: Start) -> None:
    service = start(BRIDGE_BODY_READ_TIMEOUT_S="1")
    with closing(connect(service)) as sock:
        head = (
            "POST /actions/acme HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {INGEST_TOKEN}\r\nContent-Length: 100\r\n\r\n"
        )
        started = time.monotonic()
        sock.sendall(head.encode() + b"{")
        for byte in b'"sessions": [' * 2:  # a byte every 0.4 s: 100 bytes would take 40 s
            if select.select([sock], [], [], 0.4)[0]:
                break  # the answer has begun
            sock.sendall(bytes([byte]))
        elapsed = time.monotonic() - started
        # The head and the body may arrive in separate reads: read the whole response.
        status, headers, raw = read_response(sock)
        assert status == 408, raw
        assert 0.9 < elapsed < LATE_S
        body = json.loads(raw)
        assert body["error"] == "request_timeout"
        assert "detail" in body
        assert headers["connection"] == "close"
        assert closed_within(sock, LATE_S)


def oversized_header(service: Bridge) -> bytes:
    """Sends headers of up to 8 MiB; returns what the server answered."""
    try:
        with closing(connect(service)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\nX-Big: ")
            with suppress(OSError):  # the server closes: it must not wait for all 8 MiB
                for _ in range(128):
                    sock.sendall(b"a" * 65536)
            return sock.recv(65536)
    except OSError as exc:
        return repr(exc).encode()


def test_a_header_over_the_bound_gets_431_fast_while_healthz_answers(start: Start) -> None:
    service = start()  # the default bound, 64 KiB
    with closing(connect(service)) as sock:  # just under the bound: served
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\nX-Big: " + b"a" * 60_000)
        sock.sendall(b"\r\n\r\n")
        assert read_response(sock)[0] == 200
    answers: list[bytes] = []
    attacker = threading.Thread(
        target=lambda: answers.extend(oversized_header(service) for _ in range(5))
    )
    started = time.monotonic()
    attacker.start()
    slowest = max(healthz_seconds(service) for _ in range(5))
    attacker.join(timeout=IO_TIMEOUT_S)
    assert not attacker.is_alive()
    assert time.monotonic() - started < LATE_S
    assert slowest < 0.5
    assert len(answers) == 5
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "headers_too_large"


def test_headers_not_complete_by_the_deadline_are_answered_408_and_closed(start: Start) -> None:
    service = start(BRIDGE_HEADER_READ_TIMEOUT_S="1")
    with closing(connect(service)) as silent, closing(connect(service)) as trickling:
        trickling.sendall(get("/healthz"))  # the deadline also holds for a keep-alive request
        assert read_response(trickling)[0] == 200
        started = time.monotonic()
        trickling.sendall(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n")
        trickling.settimeout(0.3)
        answer = b""
        for byte in b"X-Slow: " * 2:  # a byte every 0.3 s: bytes keep coming, the deadline holds
            try:
                answer = trickling.recv(65536)
                break
            except TimeoutError:
                trickling.sendall(bytes([byte]))
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"
        assert closed_within(trickling, LATE_S)
        assert closed_within(silent, LATE_S)  # never sent a byte: closed without an answer
        assert time.monotonic() - started < LATE_S


def test_connections_beyond_the_limit_get_503(start: Start) -> None:
    service = start(BRIDGE_MAX_CONNECTIONS="4")
    service.client.close()  # the readiness probe's keep-alive connection
    time.sleep(0.2)
    held = [connect(service) for _ in range(3)]
    try:
        with closing(connect(service)) as fourth:
            fourth.sendall(get("/healthz"))
            assert read_response(fourth)[0] == 200
            with closing(connect(service)) as fifth:
                fifth.sendall(get("/healthz"))
                status, headers, body = read_response(fifth)
                assert status == 503
                assert headers["content-type"] == "application/json"
                assert json.loads(body)["error"] == "overloaded"
                assert closed_within(fifth, LATE_S)
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert healthz_seconds(service) < 1.0  # served again once connections are free
    with closing(connect(service)) as sock:
        sock.sendall(get("/metrics"))
        _, _, metrics = read_response(sock)
    # The refusal never reached the app's request histogram, so it is counted on its own.
    assert b'bridge_http_refused_total{reason="overloaded"} 1.0' in metrics


def test_an_idle_keepalive_connection_is_closed_after_the_timeout(start: Start) -> None:
    service = start(BRIDGE_KEEPALIVE_TIMEOUT_S="1")
    with closing(connect(service)) as sock:
        sock.sendall(get("/healthz"))
        status, headers, _ = read_response(sock)
        assert status == 200
        assert headers.get("connection") != "close"
        started = time.monotonic()
        assert closed_within(sock, LATE_S)
        assert 0.8 < time.monotonic() - started < LATE_S


def test_a_response_before_the_body_is_read_ends_the_connection(start: Start) -> None:
    service = start()
    with closing(connect(service)) as sock:
        # /healthz never reads a body: without this, a client could trickle one for ever.
        head = b"POST /healthz HTTP/1.1\r\nHost: bridge\r\nContent-Length: 1000\r\n\r\n"
        sock.sendall(head + b"x" * 10)
        assert read_response(sock)[0] == 405
        assert closed_within(sock, 1.0)


def test_the_request_log_line_has_no_query_string(start: Start, tmp_path: Path) -> None:
    service = start()
    r = service.client.get("/healthz?token=secret123", headers={"x-request-id": "req-limits-1"})
    assert r.status_code == 200
    service.client.post("/actions/acme?token=secret123", content=b"{}")
    upgrade = (
        "GET /healthz?token=secret123 HTTP/1.1\r\nHost: bridge\r\nConnection: Upgrade\r\n"
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    with closing(connect(service)) as sock:  # uvicorn's websocket lines carry the query string
        sock.sendall(upgrade.encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 ")
    deadline = time.monotonic() + IO_TIMEOUT_S
    lines: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(lines) < 3:
        events = [json.loads(line) for line in service.log_events() if line.startswith("{")]
        lines = [e for e in events if e["event"] == "http_request" and e["path"] != "/readyz"]
        time.sleep(0.05)
    healthz = next(e for e in lines if e["path"] == "/healthz")
    assert healthz["method"] == "GET"
    assert healthz["status"] == 200
    assert healthz["request_id"] == "req-limits-1"
    assert isinstance(healthz["duration_ms"], int | float)
    assert any(e["path"] == "/actions/acme" and e["status"] == 415 for e in lines)
    assert "secret123" not in (tmp_path / "bridge.log").read_text()
