"""The outbound HTTP client every platform adapter shares: the httpx API over aiohttp.

Adapters build and send ``httpx`` requests. Underneath, the default transport is aiohttp's
connection pool (through ``httpx-aiohttp``). On `bench/http_calls.py` it costs about a quarter
of the client CPU per note of httpx's own httpcore transport. Tests swap the transport:
``respx.mock(using="httpx")``, or ``http_client(transport=...)``.
"""

from __future__ import annotations

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


def http_client(transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    """The client of one process; ``transport`` replaces aiohttp (tests, benchmarks)."""
    return httpx.AsyncClient(
        transport=transport or PlatformTransport(),
        timeout=httpx.Timeout(CALL_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        follow_redirects=False,
    )
