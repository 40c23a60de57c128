"""uvicorn with a graceful drain: the first SIGTERM stops intake and posts the due notes."""

from __future__ import annotations

import asyncio
import socket
from types import FrameType

import structlog
import uvicorn
from fastapi import FastAPI

log = structlog.get_logger(__name__)


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


def serve(app: FastAPI, *, host: str, port: int) -> None:
    config = uvicorn.Config(app, host=host, port=port, proxy_headers=True, log_config=None)
    BridgeServer(config, app).run()
