"""A minimal HTTP/1.1 keep-alive client for the latency benchmarks' load.

httpx costs this process milliseconds of CPU per request here (its pool polls every idle
connection's socket on each request, and httpcore retries a failed ``import sniffio`` on every
call when sniffio is not installed), so at 200 requests/s the load generator itself would
saturate a core and its own delays would show up as the service's latency. This client only
speaks what the service and the fake bot answer: a status line, headers, a Content-Length body.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class ProtocolError(Exception):
    """An answer this client does not understand (chunked, no Content-Length, ...)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes


async def read_answer(reader: asyncio.StreamReader) -> tuple[Answer, bool]:
    """One response, and whether the server keeps the connection open."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionResetError("the server closed the connection")
    status = int(status_line.split(b" ", 2)[1])
    length, keep_alive = None, True
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"connection" and value.strip().lower() == b"close":
            keep_alive = False
        elif name == b"transfer-encoding":
            raise ProtocolError("chunked answers are not supported")
    if length is None:
        raise ProtocolError("the answer has no Content-Length")
    return Answer(status, await reader.readexactly(length)), keep_alive


class RawClient:
    """At most ``size`` keep-alive connections to one ``host:port``; requests queue for one."""

    def __init__(self, host: str, port: int, *, size: int = 64) -> None:
        self._host, self._port = host, port
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(size)

    async def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Answer:
        head = [f"{method} {path} HTTP/1.1", f"host: {self._host}:{self._port}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head.append(f"content-length: {len(body)}")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        async with self._slots:
            if self._idle:
                with contextlib.suppress(ConnectionResetError):
                    return await self._exchange(self._idle.pop(), data)
                # The server closed the idle connection (keep-alive timeout) before reading
                # the request, so nothing was processed: send it again on a new one.
            return await self._exchange(await self._open(), data)

    async def _exchange(self, connection: _Connection, data: bytes) -> Answer:
        reader, writer = connection
        try:
            writer.write(data)
            answer, keep_alive = await read_answer(reader)
        except BaseException:
            writer.close()
            raise
        if keep_alive:
            self._idle.append(connection)
        else:
            writer.close()
        return answer

    async def _open(self) -> _Connection:
        return await asyncio.open_connection(self._host, self._port)

    async def aclose(self) -> None:
        while self._idle:
            _, writer = self._idle.pop()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
