"""The outbound HTTP client every platform adapter shares: the httpx API over aiohttp.

Adapters build ``httpx`` requests and send them through ``Platform.send``. Underneath, the
transport is aiohttp's connection pool (through ``httpx-aiohttp``), and ``PlatformClient.send``
skips the per-request work of ``httpx.AsyncClient`` that a platform call does not need. On
bench/http_calls.py a note costs about 0.2 ms of client CPU this way, against 1.1-1.2 ms over
httpx's own httpcore transport. Tests pass httpx's own transport instead (``http_client
(transport=...)``, ``create_app(http_transport=...)``), which respx mocks.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from app.platforms.base import CALL_TIMEOUT_S, CONNECT_TIMEOUT_S

MAX_CONNECTIONS = 256
# Idle connections are closed after this (platforms' own keep-alive is usually longer).
KEEPALIVE_S = 5.0


class PlatformTransport(AiohttpTransport):
    """httpx-aiohttp's transport with the pool and the failures the adapters rely on.

    Every aiohttp failure reaches the adapters as an ``httpx.TransportError`` (a retryable
    delivery) named for what happened: httpx-aiohttp passes a malformed answer through
    unmapped and calls a refused connection or a hang-up a ``ConnectTimeout``. aiohttp keeps no
    cookie jar of its own: httpx's client handles cookies, as it does over httpcore.
    """

    def get_client(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=MAX_CONNECTIONS, keepalive_timeout=KEEPALIVE_S, ssl=self.ssl_context
        )
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except (httpx.TransportError, aiohttp.ClientError) as exc:
            cause = exc.__cause__ if isinstance(exc, httpx.TransportError) else exc
            if cause is None or isinstance(cause, aiohttp.ServerTimeoutError):
                raise  # a timeout: httpx-aiohttp names these right
            error = (
                httpx.ConnectError
                if isinstance(cause, aiohttp.ClientConnectorError)
                else httpx.RemoteProtocolError
            )
            raise error(f"{type(cause).__name__}: {cause}", request=request) from cause


class PlatformClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` whose ``send`` hands the request straight to its transport.

    A platform call needs none of what ``AsyncClient.send`` adds on every request: auth flows,
    redirects (never followed here), cookie persistence (a call must not depend on an earlier
    one's cookies), event hooks. Skipping them saves about 90 µs of CPU per note
    (bench/http_calls.py). Proxies from the environment still apply: the transport is the one
    ``AsyncClient`` would pick for the URL. Any other use of ``send`` (streaming, auth, a
    redirect policy) takes the standard path.
    """

    async def send(self, request: httpx.Request, **options: Any) -> httpx.Response:
        if options:
            return await super().send(request, **options)
        response = await self._transport_for_url(request.url).handle_async_request(request)
        response.request = request
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response


def http_client(transport: httpx.AsyncBaseTransport | None = None) -> PlatformClient:
    """The client of one process; ``transport`` replaces aiohttp (tests, benchmarks)."""
    return PlatformClient(
        transport=transport or PlatformTransport(),
        timeout=httpx.Timeout(CALL_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        follow_redirects=False,
    )
