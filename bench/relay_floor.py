"""The floor of a two-process Python server: HTTP in, a frame to another process, HTTP out.

``bench.hops`` measures two floors apart (a bare HTTP reply; a Unix-socket
ping-pong).  This joins them as a server would, with nothing else: a uvloop
``asyncio.Protocol`` reads each HTTP/1.1 request, forwards its body as one
13-byte-header frame to ``bench.unix_pingpong``'s server (a blocking thread in
another process, as a model container reads its socket), and, in the socket's
``data_received``, writes the answer as the HTTP reply to the connection that
asked: no task, no future, no queue, no parse of the body.  What a Python
frontend and container cost one query at a time at the least, on this host
(``python -m bench.wakeups --floor`` runs it beside the server).

    python -m bench.relay_floor --serve PORT SOCKET_PATH   # the relay alone
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile

from bench.ports import free_port
from bench.unix_pingpong import HEADER, take_frames

_REPLY_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "


class _Relay:
    """The container end: frames out, answers back to the asking connection."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: dict[int, asyncio.Transport] = {}
        self.next_id = 0
        self.buf = bytearray()

    def send(self, client: asyncio.Transport, body: bytes) -> None:
        self.next_id += 1
        self.waiting[self.next_id] = client
        assert self.transport is not None
        self.transport.write(HEADER.pack(len(body), 1, self.next_id) + body)

    def received(self, data: bytes) -> None:
        self.buf += data
        for call_id, body in take_frames(self.buf):
            client = self.waiting.pop(call_id, None)
            if client is not None and not client.is_closing():
                client.write(b"%s%d\r\n\r\n%s" % (_REPLY_HEAD, len(body), body))


class _SocketEnd(asyncio.Protocol):
    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.relay.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.relay.received(data)


class _HttpEnd(asyncio.Protocol):
    """Keep-alive HTTP/1.1 with Content-Length bodies (what wrk sends)."""

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            n = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    n = int(line[15:])
            if len(rest) < n:
                return
            self.buf = rest[n:]
            self.relay.send(self.transport, rest[:n])


async def _serve(port: int, path: str) -> None:
    loop = asyncio.get_running_loop()
    relay = _Relay()
    await loop.create_unix_connection(lambda: _SocketEnd(relay), path)
    server = await loop.create_server(lambda: _HttpEnd(relay), "127.0.0.1", port)
    print("ready", flush=True)
    await server.serve_forever()


class RelayFloor:
    """The ping-pong server and the relay, each in its own process; ``pids`` as
    ``bench.hops.Server`` has them (``frontend``, ``container``)."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="clipper-relay-")
        path = os.path.join(self._dir, "floor.sock")
        self.port = free_port()
        self._procs: list[subprocess.Popen[str]] = []
        try:
            for argv in (
                ["-m", "bench.unix_pingpong", "--serve", path],
                ["-m", "bench.relay_floor", "--serve", str(self.port), path],
            ):
                proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True)
                self._procs.append(proc)
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"{argv} did not start")
        except BaseException:
            self.stop()
            raise
        self.pids = {"frontend": self._procs[1].pid, "container": self._procs[0].pid}

    def stop(self) -> None:
        for proc in reversed(self._procs):
            proc.kill()
            proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--serve", nargs=2, metavar=("PORT", "SOCKET_PATH"), required=True)
    args = p.parse_args(argv)
    import uvloop

    uvloop.run(_serve(int(args.serve[0]), args.serve[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
