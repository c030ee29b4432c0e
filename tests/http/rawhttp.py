"""A minimal HTTP/1.1 client over raw asyncio streams, for the server tests.

Every socket operation has a timeout, so that a broken server fails a test instead
of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from clipper_core.http import HttpServer, Router

TIMEOUT = 5.0


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    head: bytes = b""

    def json(self) -> Any:
        return orjson.loads(self.body)


class Client:
    """One connection to the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), TIMEOUT)

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        version: str = "1.1",
    ) -> RawResponse:
        await self.send(build(method, path, body, headers, version))
        return await self.read_response(head=method == "HEAD")

    async def read_response(self, head: bool = False) -> RawResponse:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        lines = raw.decode("latin-1").split("\r\n")
        version, status, *_ = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        code = int(status)
        body = b""
        if code >= 200 and not head and "content-length" in headers:
            body = await asyncio.wait_for(
                self.reader.readexactly(int(headers["content-length"])), TIMEOUT
            )
        return RawResponse(code, headers, body, raw)

    async def read_eof(self) -> bytes:
        """Everything up to the server's close (fails if it does not close)."""
        return await asyncio.wait_for(self.reader.read(), TIMEOUT)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)


def build(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    version: str = "1.1",
) -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: test"]
    hdrs = dict(headers or {})
    if body and "Transfer-Encoding" not in hdrs:
        hdrs.setdefault("Content-Length", str(len(body)))
    lines.extend(f"{k}: {v}" for k, v in hdrs.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*chunks: bytes) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c)
    return out + b"0\r\n\r\n"


@contextlib.asynccontextmanager
async def serving(router: Router, **kwargs: Any) -> AsyncIterator[HttpServer]:
    server = HttpServer(router, **kwargs)
    await server.start()
    try:
        yield server
    finally:
        await asyncio.wait_for(server.stop(grace=1.0), TIMEOUT)


def run(loop: asyncio.AbstractEventLoop, coro: Any, timeout: float = 15.0) -> Any:
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))
