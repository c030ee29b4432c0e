"""The floor of the container hop: a bare Unix-socket ping-pong between two Python processes.

Both ends work as clipper_core's local transport does, minus everything else:
the server (``--serve PATH``) is a blocking thread that reads a 13-byte-header frame
and writes the same bytes back with one ``sendmsg`` (``model_containers.local_socket``);
the client (``--client PATH``) is an ``asyncio.Protocol`` on uvloop that matches
answers to futures (``clipper_core.local_channel``).  The client connects, warms
up, prints ``ready``, and on each line of stdin (a count N) sends N frames one at a
time and prints the round trips' median and the seconds it took, as JSON.

    python -m bench.unix_pingpong --serve /tmp/pp.sock &
    python -m bench.unix_pingpong --client /tmp/pp.sock
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import struct
import sys
import threading
import time
from collections.abc import Iterator

HEADER = struct.Struct("<IBQ")
#: What a noop query's PredictRequest is about (a batch of one 8-float input).
PAYLOAD = b"x" * 48


def serve(path: str) -> None:
    """Answer each frame with the same bytes, on one thread per connection."""
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(4)
    print("ready", flush=True)

    def one(conn: socket.socket) -> None:
        buf = bytearray()
        scratch = memoryview(bytearray(256 * 1024))
        while True:
            while len(buf) < HEADER.size:
                got = conn.recv_into(scratch)
                if not got:
                    return
                buf += scratch[:got]
            length, _, call_id = HEADER.unpack_from(buf)
            while len(buf) < HEADER.size + length:
                got = conn.recv_into(scratch)
                if not got:
                    return
                buf += scratch[:got]
            body = bytes(buf[HEADER.size : HEADER.size + length])
            del buf[: HEADER.size + length]
            conn.sendmsg([HEADER.pack(len(body), 0, call_id), body])

    while True:
        conn, _ = sock.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


def take_frames(buf: bytearray) -> Iterator[tuple[int, bytes]]:
    """Each whole frame at the head of ``buf`` as ``(call_id, payload)``, removed
    from it; a partial frame stays."""
    while len(buf) >= HEADER.size:
        length, _, call_id = HEADER.unpack_from(buf)
        end = HEADER.size + length
        if len(buf) < end:
            return
        payload = bytes(buf[HEADER.size : end])
        del buf[:end]
        yield call_id, payload


class _Channel(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.calls: dict[int, asyncio.Future[bytes]] = {}
        self.next_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for call_id, payload in take_frames(self.buf):
            fut = self.calls.pop(call_id, None)
            if fut is not None:
                fut.set_result(payload)

    async def call(self, payload: bytes) -> bytes:
        self.next_id += 1
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.calls[self.next_id] = fut
        self.transport.writelines((HEADER.pack(len(payload), 1, self.next_id), payload))
        return await fut


async def client(path: str) -> None:
    loop = asyncio.get_running_loop()
    _, channel = await loop.create_unix_connection(_Channel, path)
    for _ in range(200):
        await channel.call(PAYLOAD)
    print("ready", flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        n = int(line)
        rtts = []
        t0 = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            await channel.call(PAYLOAD)
            rtts.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - t0
        print(json.dumps({"p50_us": statistics.median(rtts) * 1e6, "seconds": elapsed}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--serve", metavar="PATH")
    g.add_argument("--client", metavar="PATH")
    args = p.parse_args()
    if args.serve:
        serve(args.serve)
    else:
        import uvloop

        uvloop.run(client(args.client))


if __name__ == "__main__":
    main()
