"""uvicorn with a graceful drain and per-client limits (docs/limits.md).

The first SIGTERM stops intake and posts the due notes. No client may hold the server: header
size and read time are bounded here, body read time in ``json_body``, and idle keep-alive and
the number of connections through uvicorn's own settings.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
from types import FrameType
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI

# uvicorn internals: httptools (faster than h11, and what runs here) has no bound on header
# size or header read time, so ``LimitedHttpToolsProtocol`` subclasses uvicorn's protocol and
# relies on its attributes (parser, transport, cycle, connections, tasks, app, pipeline) and on
# the ASGI types of ``uvicorn._types``. Pin an upper bound on uvicorn and re-read this class
# when raising it.
from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app import metrics
from app.settings import Settings

log = structlog.get_logger(__name__)

OVERLOADED_DETAIL = "the server is at its connection limit; retry later"


def _error_body(code: str, detail: str) -> bytes:
    return json.dumps({"error": code, "detail": detail}).encode()


_OVERLOADED_BODY = _error_body("overloaded", OVERLOADED_DETAIL)
_OVERLOADED_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_OVERLOADED_BODY)).encode()),
    (b"retry-after", b"1"),
    (b"connection", b"close"),
]


async def _overloaded(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """What a request beyond the connection limit gets (uvicorn's own 503 is plain text)."""
    await send({"type": "http.response.start", "status": 503, "headers": _OVERLOADED_HEADERS})
    await send({"type": "http.response.body", "body": _OVERLOADED_BODY, "more_body": False})


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus:

    - request headers are bounded in size (431) and in read time (408, counted from the
      connection for its first request, else from the request's first byte; a connection that
      sends nothing is closed without an answer);
    - at most ``limit_concurrency`` connections are served, a request on one more gets a JSON
      503 (uvicorn's own check is plain text, and already refuses at the limit itself);
    - a response sent before the request body has arrived ends the connection, so an unread
      body cannot keep it open.
    """

    max_header_bytes = 65_536
    header_read_timeout_s = 10.0

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # The limit is applied here rather than by uvicorn, to answer it in JSON.
        self.max_connections = self.limit_concurrency
        self.limit_concurrency = None
        self.bridge_app = self.app
        self.header_bytes = 0
        self.awaiting_headers = True
        self.request_began: float | None = None
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.header_timer = self.loop.call_later(self.header_read_timeout_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.awaiting_headers:
            room = self.max_header_bytes - self.header_bytes
            if len(data) > room:
                self._feed_up_to_the_bound(data, room)
                return
            self.header_bytes += len(data)
        super().data_received(data)
        if self.request_began is not None and self.header_timer is None:
            self._arm_header_timer()

    def _feed_up_to_the_bound(self, data: bytes, room: int) -> None:
        # Headers that end within the bound may share this chunk with a body: feed up to the
        # bound, and go on only if the headers were complete by then (the count went to 0).
        self.header_bytes = self.max_header_bytes
        if room > 0:
            super().data_received(data[:room])
            if self.transport.is_closing():
                return
        if self.header_bytes == self.max_header_bytes:
            detail = f"the request headers are larger than {self.max_header_bytes} bytes"
            log.warning("http_headers_too_large", limit_bytes=self.max_header_bytes)
            metrics.HTTP_REFUSED.labels("headers_too_large").inc()
            self._reject(431, "headers_too_large", detail)
            return
        self.data_received(data[room:])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.request_began is None:
            self.request_began = self.loop.time()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self.request_began = None
        self.awaiting_headers = False
        self.header_bytes = 0
        self.app = _overloaded if self._overloaded() else self.bridge_app
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.awaiting_headers = True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if not self.pipeline and self.cycle.more_body:
            self.transport.close()
        super().on_response_complete()

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn's two warnings say a websocket library is missing; here ``ws="none"`` is chosen.
        log.info("http_upgrade_ignored")

    def _overloaded(self) -> bool:
        limit = self.max_connections
        if limit is None:
            return False
        # ``connections`` includes this one; ``tasks`` does not yet include this request's.
        if len(self.connections) <= limit and len(self.tasks) < limit:
            return False
        log.warning("http_overloaded", max_connections=limit)
        metrics.HTTP_REFUSED.labels("overloaded").inc()
        return True

    def _arm_header_timer(self) -> None:
        assert self.request_began is not None
        deadline = self.request_began + self.header_read_timeout_s
        self.header_timer = self.loop.call_at(deadline, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.transport.is_closing():
            return
        if self.request_began is None:  # not a byte since the connection opened: nothing to answer
            self.transport.close()
            return
        detail = f"the request headers did not arrive within {self.header_read_timeout_s:g} s"
        log.info("http_header_timeout", timeout_s=self.header_read_timeout_s)
        metrics.HTTP_REFUSED.labels("header_timeout").inc()
        self._reject(408, "request_timeout", detail)

    def _reject(self, status: int, code: str, detail: str) -> None:
        """Answer a request the app never saw, and close the connection."""
        if self.cycle is None or self.cycle.response_complete:
            # Otherwise a response is on its way and this one would interleave with it.
            self.transport.write(self._error_response(status, code, detail))
        self.transport.close()

    def _error_response(self, status: int, code: str, detail: str) -> bytes:
        body = _error_body(code, detail)
        head = [STATUS_LINE[status]]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        return b"".join(head) + body


def limited_http(settings: Settings) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, with the settings' header limits."""

    class Configured(LimitedHttpToolsProtocol):
        max_header_bytes = settings.max_header_bytes
        header_read_timeout_s = settings.header_read_timeout_s

    return Configured


class BridgeServer(uvicorn.Server):
    """On the first SIGTERM or SIGINT, /readyz and intake answer 503 while the worker posts
    every note that falls due within the grace period; then the server shuts down. A second
    signal shuts down at once (what is left stays in the store)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        services = getattr(self._app.state, "services", None)
        if self._drain is not None or services is None or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._drain = self._loop.create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        services = self._app.state.services
        services.accepting = False
        grace_s = services.settings.shutdown_grace_s
        log.info("shutdown_draining", grace_s=grace_s)
        services.worker.stop(grace_s)
        if services.worker_task is not None:
            await asyncio.shield(services.worker_task)
        log.info("shutdown_drained")
        self.should_exit = True


def serve(app: FastAPI, *, host: str, port: int, settings: Settings | None = None) -> None:
    """Run ``app`` until a signal stops it, with the limits of ``settings`` (or the env)."""
    settings = settings or Settings()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        proxy_headers=True,
        log_config=None,
        http=limited_http(settings),
        # No websocket routes: without a ws protocol an upgrade stays plain HTTP, and uvicorn
        # has no websocket log line (those carry the query string).
        ws="none",
        # ``RequestContextMiddleware`` logs each request, without the query string.
        access_log=False,
        timeout_keep_alive=settings.keepalive_timeout_s,
        limit_concurrency=settings.max_connections,
    )
    tune_gc()
    BridgeServer(config, app).run()


def tune_gc() -> None:
    """Collect garbage less often, and never walk the objects that live as long as the process.

    What exists before the server starts (modules, models, routes) is never garbage:
    ``gc.freeze`` keeps every later collection from walking it again. Most of what a request
    allocates is freed by reference counting, so a first generation of 50 000 (default 700)
    is rarely reached. Measured with bench/app_calls.py (the same rounds of 15 000 batches
    and 8 000 notes): with the defaults, about 1 800 young and 7 full collections, the full
    ones stopping the event loop for up to 75 ms each (a note's p99 budget is 50 ms above
    its debounce); with these settings, none.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
