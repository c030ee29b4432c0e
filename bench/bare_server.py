"""A bare server that answers every request with one fixed reply: the floor.

HTTP/1.1 (``--kind http``): an ``asyncio.Protocol`` on uvloop that splits requests
by ``Content-Length`` and writes the same response for each, with no routing, no
JSON, no model.  gRPC (``--kind grpc``): a ``grpc.aio`` server whose
``inference.GRPCInferenceService/ModelInfer`` returns fixed bytes (``--kind
grpc-sync``: the sync ``grpc.server`` on a pool of 32 threads).  The reply body
is read from ``--reply-file`` (the orchestrator passes what clipper_core answered,
so both servers send the same bytes).  Prints ``ready`` once it listens.

    python -m bench.bare_server --kind http --port 8080 --reply-file reply.bin
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path


def http_reply(body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    return head + body


class FixedReply(asyncio.Protocol):
    """Answers each complete request (head + Content-Length body) with ``reply``."""

    reply = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            n = 0
            lower = buf[:end].lower()
            i = lower.find(b"\r\ncontent-length:")
            if i >= 0:
                j = lower.find(b"\r\n", i + 2)
                n = int(lower[i + 17 : j if j >= 0 else end])
            total = end + 4 + n
            if len(buf) < total:
                break
            buf = buf[total:]
            out.append(self.reply)
        self.buf = buf
        if out:
            self.transport.write(b"".join(out))


async def serve_http(port: int, reply: bytes) -> None:
    FixedReply.reply = reply
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(FixedReply, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    async with srv:
        await stop.wait()


async def serve_grpc(port: int, reply: bytes) -> None:
    import grpc

    async def model_infer(request: bytes, context: object) -> bytes:
        return reply

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(1)


def serve_grpc_sync(port: int, reply: bytes, threads: int) -> None:
    """The same reply from the sync ``grpc.server`` on a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    def model_infer(request: bytes, context: object) -> bytes:
        return reply

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(model_infer)},
    )
    # SIGTERM blocked before gRPC starts its threads (they inherit the mask) and
    # taken with sigwait: a handler plus Event.wait() hangs when another thread
    # takes the signal, as the main thread, blocked on a lock, never runs it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    server = grpc.server(ThreadPoolExecutor(max_workers=threads))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM})
    server.stop(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kind", choices=["http", "grpc", "grpc-sync"], default="http")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--reply-file", type=Path, help="the reply body (default: a small JSON)")
    p.add_argument("--content-type", default="application/json")
    args = p.parse_args(argv)
    body = (
        args.reply_file.read_bytes()
        if args.reply_file
        else b'{"query_id":0,"output":1.0,"default":false}'
    )
    if args.kind == "grpc-sync":
        serve_grpc_sync(args.port, body, threads=32)
        return 0
    import uvloop

    if args.kind == "http":
        uvloop.run(serve_http(args.port, http_reply(body, args.content_type)))
    else:
        uvloop.run(serve_grpc(args.port, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
