"""The platforms' shared client over aiohttp, against raw local servers: what reaches the
server, connection reuse, and every transport failure surfacing as an httpx error (which the
adapters turn into a retryable delivery)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from app.platforms.base import RetryableDeliveryError
from app.platforms.client import PlatformClient, PlatformTransport, http_client
from app.platforms.http import HttpPlatform
from tests.conftest import free_port
from tests.platforms.test_http import FixedClock, make_note, make_product

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

CREATED = (
    b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nx-note: yes\r\n"
    b'content-length: 11\r\n\r\n{"id":"n1"}'
)


@dataclass
class Server:
    url: str
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


@asynccontextmanager
async def raw_server(answer: bytes | None, *, close: bool = False) -> AsyncIterator[Server]:
    """Answers every request with ``answer`` (None: never answers); ``close``: then hangs up."""
    server = Server(url="")
    hung: list[asyncio.Event] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        try:
            while True:
                server.requests.append(await read_request(reader))
                if answer is None:
                    hung.append(event := asyncio.Event())
                    await event.wait()
                    return
                writer.write(answer)
                await writer.drain()
                if close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}/notes"
    try:
        yield server
    finally:
        for event in hung:
            event.set()
        listener.close()
        await listener.wait_closed()


async def post(client: httpx.AsyncClient, url: str, **options: Any) -> httpx.Response:
    """What the adapters do (``Platform.send``): build the request, then send it as is."""
    return await client.send(client.build_request("POST", url, **options))


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with http_client() as shared:
        assert isinstance(shared._transport, PlatformTransport)
        yield shared


async def test_a_post_arrives_whole_and_its_answer_reads_back(client: httpx.AsyncClient) -> None:
    async with raw_server(CREATED) as server:
        response = await post(
            client, server.url, content=b'{"note":"x"}', headers={"webhook-id": "msg_1"}
        )
    assert (response.status_code, response.json()) == (201, {"id": "n1"})
    assert response.headers["x-note"] == "yes"
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /notes HTTP/1.1\r\n")
    assert b"\r\nwebhook-id: msg_1" in head.lower()
    assert body == b'{"note":"x"}'


async def test_keep_alive_reuses_one_connection(client: httpx.AsyncClient) -> None:
    async with raw_server(CREATED) as server:
        for _ in range(5):
            assert (await post(client, server.url, content=b"{}")).status_code == 201
    assert (len(server.requests), server.connections) == (5, 1)


@pytest.mark.parametrize(
    ("answer", "close"),
    [(b"NOT HTTP AT ALL\r\n\r\n", False), (b"", True)],
    ids=["garbage", "hang-up"],
)
async def test_a_broken_answer_is_an_httpx_protocol_error(
    client: httpx.AsyncClient, answer: bytes, close: bool
) -> None:
    async with raw_server(answer, close=close) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await post(client, server.url, content=b"{}")


async def test_a_refused_connection_is_an_httpx_connect_error(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ConnectError):
        await post(client, f"http://127.0.0.1:{free_port()}/notes", content=b"{}")


async def test_the_read_timeout_applies(client: httpx.AsyncClient) -> None:
    async with raw_server(None) as server:
        started = asyncio.get_running_loop().time()
        with pytest.raises(httpx.TimeoutException):
            await post(client, server.url, content=b"{}", timeout=httpx.Timeout(0.2))
        assert asyncio.get_running_loop().time() - started < 2


# A body cut short by the server hanging up, and garbage.
@pytest.mark.parametrize(
    "answer", [b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n{}", b"\x00\xff"]
)
async def test_an_adapter_sees_a_broken_platform_as_a_retryable_failure(
    client: httpx.AsyncClient, answer: bytes
) -> None:
    async with raw_server(answer, close=True) as server:
        platform = HttpPlatform(make_product(url=server.url), client, FixedClock())
        with pytest.raises(RetryableDeliveryError):
            await asyncio.wait_for(platform.post_note(make_note()), 5)


async def test_send_keeps_no_cookies_between_calls(client: httpx.AsyncClient) -> None:
    answer = b"HTTP/1.1 200 OK\r\nset-cookie: session=abc; Path=/\r\ncontent-length: 2\r\n\r\n{}"
    async with raw_server(answer) as server:
        first = await post(client, server.url, content=b"{}")
        await post(client, server.url, content=b"{}")
    assert first.request.url == server.url
    assert not client.cookies
    assert b"cookie:" not in server.requests[1].lower()


async def test_send_uses_the_transport_mounted_for_the_url() -> None:
    seen: list[str] = []

    def proxy(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(202, json={"id": "p1"})

    mounts = {"https://platform.test": httpx.MockTransport(proxy)}
    async with PlatformClient(mounts=mounts) as client:
        response = await post(client, "https://platform.test/notes", content=b"{}")
    assert (response.status_code, response.json(), seen) == (
        202,
        {"id": "p1"},
        ["https://platform.test/notes"],
    )
