"""Predict over a Unix socket, for a frontend on the same host.

gRPC costs this VM 0.7-1 ms per round trip between two processes (HTTP/2
framing, completion queues, a thread hand-off on each side); a Unix socket costs
about 60 us.  The local socket carries the very same ``PredictRequest`` and
``PredictResponse`` messages in 13-byte-header frames (the framing is written
down in ``protos/container.proto``, "Local transport").  Health checks, metadata
and remote replicas stay on gRPC; the frontend learns the socket's path and the
container's token from ``ModelMetadata``.

One thread per connection reads a frame, answers it and reads the next; the
servicer's semaphore still caps concurrent model calls (``--max-workers``).

The default socket lives in a private folder ``clipper-sock-<pid>-*`` in the
temporary directory.  A container killed with SIGKILL cannot remove it, so each
new container removes the folders of this user whose pid is no longer running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import socket
import stat
import struct
import tempfile
import threading
import time
import traceback
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError

from model_containers import hop_trace
from model_containers._proto import container_pb2 as pb
from model_containers.failures import PredictFailure


class Answerer(Protocol):
    """What the socket serves (``model_containers.server.ModelContainerServicer``)."""

    instance_token: str
    local_socket: str

    def answer(self, request: pb.PredictRequest) -> pb.PredictResponse: ...


log = logging.getLogger("model_containers")

#: Payload length, kind, call id.
HEADER = struct.Struct("<IBQ")
_HEADER_SIZE = HEADER.size
KIND_OK = 0
KIND_PREDICT = 1
KIND_HELLO = 255
_RECV_SIZE = 256 * 1024
#: Replies shorter than this go out as one joined buffer.
_JOIN_BELOW = 16 * 1024
#: The default socket folder is ``<tmp>/clipper-sock-<pid>-<random>``.
DIR_PREFIX = "clipper-sock-"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: running, as another user
        return True
    return True


def remove_stale_dirs(tmp: str | None = None) -> int:
    """Remove the socket folders that containers of this user left behind when
    they were killed (their pid no longer runs); return how many went.

    Only this user's folders are touched.  A pid reused by another process keeps
    its dead container's folder (harmless); a live container's folder carries
    its own running pid, so it is never removed.
    """
    tmp = tmp or tempfile.gettempdir()
    uid = os.getuid()
    removed = 0
    try:
        names = os.listdir(tmp)
    except OSError:
        return 0
    for name in names:
        if not name.startswith(DIR_PREFIX):
            continue
        pid_text = name[len(DIR_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or _running(int(pid_text)):
            continue
        path = os.path.join(tmp, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def frame(kind: int, call_id: int, payload: bytes) -> bytes:
    return HEADER.pack(len(payload), kind, call_id) + payload


def _status(code: grpc.StatusCode) -> int:
    return int(code.value[0])


#: How long a refused frame's payload is read and thrown away before the close.
_LINGER_SECONDS = 2.0


def _linger(conn: socket.socket, unread: int) -> None:
    """Close our half, then read and drop what the frontend is still sending
    (at most ``unread`` bytes, for at most ``_LINGER_SECONDS``) before the close.

    Closing at once while the frontend is mid-write fails its write with EPIPE, and
    its event loop reports the connection lost before it has read the refusal we
    sent: the call then fails with a reset instead of RESOURCE_EXHAUSTED.
    """
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + _LINGER_SECONDS
        scratch = bytearray(_RECV_SIZE)
        while unread > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            conn.settimeout(left)
            got = conn.recv_into(scratch, min(unread, _RECV_SIZE))
            if not got:
                return  # the frontend read our refusal and closed
            unread -= got


class _FrameReader:
    """Reads frames off a socket with as few recv calls as it can: one per frame
    when the frontend's write arrives whole (the common case).

    Small reads land in one reused buffer (``recv_into``): ``recv(256 KiB)`` would
    allocate a fresh 256 KiB bytes each time, which glibc maps and unmaps (three
    syscalls and a TLB flush per query)."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._buf = bytearray()
        self._scratch = memoryview(bytearray(_RECV_SIZE))
        self._poll = select.poll()
        self._poll.register(conn, select.POLLIN)

    def frame(self) -> tuple[int, int, int, bytes | None] | None:
        """The next frame's ``(length, kind, call_id, payload)``, or None when the
        peer closed.  The payload is None when it did not come whole with the
        header: the caller reads it with ``read(length)`` (or refuses it unread)."""
        if not self._buf:
            # The common case: one recv brings one whole frame.
            self._poll.poll()  # see read()
            got = self._conn.recv_into(self._scratch)
            if not got:
                return None
            if got >= _HEADER_SIZE:
                length, kind, call_id = HEADER.unpack_from(self._scratch)
                end = _HEADER_SIZE + length
                if got == end:
                    return length, kind, call_id, bytes(self._scratch[_HEADER_SIZE:end])
            self._buf += self._scratch[:got]
        header = self.read(_HEADER_SIZE)
        if header is None:
            return None
        length, kind, call_id = HEADER.unpack(header)
        return length, kind, call_id, None

    def read(self, n: int) -> bytes | None:
        """Exactly ``n`` bytes, or None when the peer closed first."""
        buf = self._buf
        scratch = self._scratch
        while len(buf) < n:
            missing = n - len(buf)
            if missing > _RECV_SIZE:  # a large frame: straight into one bytes object
                chunk = self._conn.recv(missing)
                if not chunk:
                    return None
                buf += chunk
                continue
            # Sleep in poll(POLLIN), not in recv: a blocked recv is also woken
            # each time the frontend reads a reply (the kernel's write-space
            # wake-up of this socket), a second wake-up per query.
            self._poll.poll()
            got = self._conn.recv_into(scratch)
            if not got:
                return None
            buf += scratch[:got]
        with memoryview(buf) as view:
            out = bytes(view[:n])
        del buf[:n]
        return out


class LocalSocketServer:
    """Listens on a Unix socket and answers Predict frames with ``servicer.answer``.

    Args:
        servicer: The container's servicer (``answer`` does the work).
        path: Where to listen; None makes a private directory (mode 0700) in the
            temporary folder and listens on ``predict.sock`` inside it.
        max_message_bytes: Larger request frames are refused (RESOURCE_EXHAUSTED)
            and the connection is closed.
    """

    def __init__(
        self,
        servicer: Answerer,
        path: str | None = None,
        *,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.servicer = servicer
        self._max = max_message_bytes
        self._dir: str | None = None
        if path is None:
            remove_stale_dirs()
            self._dir = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-")
            path = os.path.join(self._dir, "predict.sock")
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.bind(path)
            os.chmod(path, 0o600)  # this user only, like the 0700 directory
            self._sock.listen(16)
        except OSError:
            self._sock.close()
            if self._dir is not None:  # never unlink a path someone else may own
                self._remove_files()
            raise
        self._hello = frame(KIND_HELLO, 0, servicer.instance_token.encode())
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._busy: set[socket.socket] = set()  # connections inside a call
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.servicer.local_socket = self.path
        self._thread = threading.Thread(
            target=self._accept_loop, name="container-local-accept", daemon=True
        )
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # the listening socket was closed by stop()
            with self._lock:
                if self._stopping:
                    conn.close()
                    continue
                self._conns.add(conn)
            threading.Thread(
                target=self._serve, args=(conn,), name="container-local", daemon=True
            ).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.sendall(self._hello)
            frames = _FrameReader(conn)
            while True:
                got = frames.frame()
                if got is None:
                    return
                length, kind, call_id, payload = got
                if length > self._max:
                    message = (
                        f"a request of {length} bytes exceeds the container's limit of"
                        f" {self._max} bytes"
                    )
                    too_big = _status(grpc.StatusCode.RESOURCE_EXHAUSTED)
                    conn.sendall(frame(too_big, call_id, message.encode()))
                    _linger(conn, length if payload is None else 0)
                    return  # the payload is not read: the stream cannot go on
                if payload is None:
                    payload = frames.read(length)
                if payload is None:
                    raise ConnectionResetError("the frontend closed the local socket mid-frame")
                if hop_trace.ENABLED:
                    hop_trace.start("container_read")
                self._busy.add(conn)  # a set's add and discard are atomic
                try:
                    code, body = self._answer(kind, payload)
                    if len(body) < _JOIN_BELOW:  # one buffer: cheaper than an iovec list
                        conn.sendall(HEADER.pack(len(body), code, call_id) + body)
                    else:  # no copy of a large reply
                        conn.sendmsg([HEADER.pack(len(body), code, call_id), body])
                    if hop_trace.ENABLED:
                        hop_trace.finish("container", "container_written")
                finally:
                    self._busy.discard(conn)
        except OSError:
            pass  # the frontend went away, or stop() shut the connection
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _answer(self, kind: int, payload: bytes) -> tuple[int, bytes]:
        if kind != KIND_PREDICT:
            return _status(grpc.StatusCode.UNIMPLEMENTED), f"unknown frame kind {kind}".encode()
        if self._stopping:
            return _status(grpc.StatusCode.UNAVAILABLE), b"the container is stopping"
        try:
            request = pb.PredictRequest.FromString(payload)
        except DecodeError as exc:
            return _status(grpc.StatusCode.INVALID_ARGUMENT), f"bad PredictRequest: {exc}".encode()
        if hop_trace.ENABLED:
            hop_trace.mark("container_parsed")
        try:
            response = self.servicer.answer(request)
        except PredictFailure as failure:
            return _status(failure.code), failure.details.encode("utf-8", "replace")
        except Exception as exc:  # a bug in the container: the call fails, the socket stays
            log.error("local Predict failed:\n%s", "".join(traceback.format_exception(exc)))
            return _status(grpc.StatusCode.INTERNAL), f"{type(exc).__name__}: {exc}".encode()
        if hop_trace.ENABLED:
            hop_trace.mark("container_answered")
        return KIND_OK, response.SerializeToString()

    def refuse(self) -> None:
        """From now on calls fail with UNAVAILABLE (the frontend hands them back)
        and nobody new connects; calls already running go on."""
        with self._lock:
            self._stopping = True
        # shutdown() wakes the thread blocked in accept() (a close() alone leaves it
        # blocked, and frees the number while it may still be about to use it); the
        # socket is closed once that thread has left.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)
        with contextlib.suppress(OSError):
            self._sock.close()
        self._remove_files()

    def stop(self, grace: float) -> None:
        """``refuse()``, let a running call finish within ``grace`` seconds, then
        close every connection."""
        self.refuse()
        deadline = time.monotonic() + max(grace, 0.0)
        while self._busy and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _remove_files(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        if self._dir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._dir)
