"""The container's local socket: Predict framed over a Unix socket (container.proto,
"Local transport"), found through Metadata, checked by token, cleaned up on stop."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from container_harness import Container, Launcher, model_class_args, run_async

from clipper_core.local_channel import HEADER, KIND_PREDICT, LocalChannel
from clipper_core.replica_client import INPUT_TYPES, ReplicaClient, encode_batch
from model_containers._proto import container_pb2 as pb
from model_containers.local_socket import DIR_PREFIX, remove_stale_dirs

# gRPC status codes as the error frames carry them.
INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNIMPLEMENTED = 3, 8, 12


def _request(inputs: list[np.ndarray], input_type: str = "doubles") -> bytes:
    data, offsets = encode_batch(inputs, input_type)
    return pb.PredictRequest(
        batch_id=7, input_type=INPUT_TYPES[input_type], data=data, offsets=offsets
    ).SerializeToString()


def test_predict_goes_over_the_local_socket_with_the_same_answers(containers: Launcher) -> None:
    container = containers.start(*model_class_args("SumModel"))
    batch = [np.arange(3.0), np.ones(5), np.array([2.5])]

    async def scenario() -> tuple[str, str]:
        async with (
            ReplicaClient(container.address) as local,
            ReplicaClient(container.address, local=False) as remote,
        ):
            await local.wait_ready(30)
            await remote.wait_ready(30)
            assert (local.transport, remote.transport) == ("local", "grpc")
            assert await local.predict(batch, "doubles", timeout=30) == [3.0, 5.0, 2.5]
            assert await remote.predict(batch, "doubles", timeout=30) == [3.0, 5.0, 2.5]
            meta = await local.metadata()
            return meta["local_socket"], meta["instance_token"]

    path, token = run_async(scenario)
    assert len(token) == 32
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(Path(path).parent).st_mode) == 0o700


def test_local_socket_off_keeps_predict_on_grpc(containers: Launcher) -> None:
    container = containers.start(*model_class_args("SumModel"), "--local-socket", "off")

    async def scenario() -> None:
        async with ReplicaClient(container.address) as client:
            await client.wait_ready(30)
            assert (await client.metadata())["local_socket"] == ""
            assert client.transport == "grpc"
            assert await client.predict([np.ones(4)], "doubles", timeout=30) == [4.0]

    run_async(scenario)


def test_another_process_token_is_refused(containers: Launcher) -> None:
    container = containers.start(*model_class_args("SumModel"))

    async def scenario() -> None:
        async with ReplicaClient(container.address) as client:
            await client.wait_ready(30)
            meta = await client.metadata()
        with pytest.raises(ConnectionRefusedError, match="another container process"):
            await LocalChannel.connect(meta["local_socket"], "0" * 32, timeout=5)
        channel = await LocalChannel.connect(meta["local_socket"], meta["instance_token"], 5)
        channel.close()

    run_async(scenario)


def test_bad_frames_get_error_frames(containers: Launcher) -> None:
    container = containers.start(*model_class_args("SumModel"), "--max-message-mb", "1")

    async def scenario() -> None:
        async with ReplicaClient(container.address) as client:
            await client.wait_ready(30)
            meta = await client.metadata()
        channel = await LocalChannel.connect(meta["local_socket"], meta["instance_token"], 5)
        try:
            _, fut = channel.call(KIND_PREDICT, b"\xff\xff not a protobuf")
            kind, body = await fut
            assert kind == INVALID_ARGUMENT and b"bad PredictRequest" in body
            _, fut = channel.call(42, b"")
            assert await fut == (UNIMPLEMENTED, b"unknown frame kind 42")
            # Still serving on the same connection.
            _, fut = channel.call(KIND_PREDICT, _request([np.ones(2)]))
            kind, body = await fut
            assert kind == 0 and pb.PredictResponse.FromString(body).batch_id == 7
            # Over the size limit: answered, then the connection is closed.
            _, fut = channel.call(KIND_PREDICT, _request([np.ones(200_000)]))
            kind, body = await fut
            assert kind == RESOURCE_EXHAUSTED and b"exceeds the container's limit" in body
            for _ in range(200):
                if channel.closed:
                    break
                await asyncio.sleep(0.01)
            assert channel.closed
        finally:
            channel.close()

    run_async(scenario)
    assert HEADER.size == 13


def test_an_oversized_frame_is_read_to_its_end_before_the_close(containers: Launcher) -> None:
    """The refusal of an over-limit frame must reach a frontend that is still
    writing it: the container reads and drops the rest instead of closing at once,
    which failed the frontend's write with EPIPE and lost the answer (seen in CI)."""
    container = containers.start(*model_class_args("SumModel"), "--max-message-mb", "1")

    async def metadata() -> dict[str, str]:
        async with ReplicaClient(container.address) as client:
            await client.wait_ready(30)
            return await client.metadata()

    meta = run_async(metadata)
    payload = bytes(8 * 1024 * 1024)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(meta["local_socket"])
        # Blocking writes of the whole frame: before the fix, the container closed
        # after the header and this raised BrokenPipeError / ConnectionResetError.
        sock.sendall(HEADER.pack(len(payload), KIND_PREDICT, 9) + payload)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    hello_length = HEADER.unpack_from(got)[0]
    refusal = got[HEADER.size + hello_length :]
    length, kind, call_id = HEADER.unpack_from(refusal)
    assert (kind, call_id) == (RESOURCE_EXHAUSTED, 9)
    assert b"exceeds the container's limit" in refusal[HEADER.size : HEADER.size + length]


def test_a_lost_connection_is_found_again(containers: Launcher) -> None:
    container = containers.start(*model_class_args("SumModel"))

    async def scenario() -> None:
        async with ReplicaClient(container.address) as client:
            await client.wait_ready(30)
            assert await client.predict([np.ones(2)], "doubles", timeout=30) == [2.0]
            client._local.close()  # type: ignore[union-attr]  # as if the socket broke
            assert await client.predict([np.ones(3)], "doubles", timeout=30) == [3.0]
            assert client.transport == "local"

    run_async(scenario, loop="uvloop")


def test_sigterm_removes_the_socket(containers: Launcher) -> None:
    container = containers.start(*model_class_args("SumModel"))

    async def scenario() -> str:
        async with ReplicaClient(container.address) as client:
            await client.wait_ready(30)
            return str((await client.metadata())["local_socket"])

    path = run_async(scenario)
    assert os.path.exists(path)
    container.proc.send_signal(signal.SIGTERM)
    assert container.wait(30) == 0
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))


def _socket_path(container: Container) -> str:
    async def scenario() -> str:
        async with ReplicaClient(container.address) as client:
            await client.wait_ready(30)
            return str((await client.metadata())["local_socket"])

    return run_async(scenario)


def test_a_killed_containers_socket_folder_goes_with_the_next_start(
    containers: Launcher,
) -> None:
    # A temporary folder of this test's own (a container that another test
    # process starts meanwhile would remove the stale folder first), short
    # enough for a Unix socket's path.
    own_tmp = tempfile.mkdtemp(prefix="ls-")
    env = {"TMPDIR": own_tmp}
    try:
        killed = containers.start(*model_class_args("SumModel"), env=env)
        stale = os.path.dirname(_socket_path(killed))
        assert os.path.dirname(stale) == own_tmp
        assert os.path.basename(stale).startswith(f"{DIR_PREFIX}{killed.pid}-")
        killed.proc.kill()  # SIGKILL: no chance to clean up
        killed.wait(30)
        assert os.path.isdir(stale)
        alive = containers.start(*model_class_args("SumModel"), env=env)
        assert not os.path.exists(stale)
        assert os.path.exists(_socket_path(alive))
        alive.proc.terminate()
        alive.wait(30)
    finally:
        shutil.rmtree(own_tmp, ignore_errors=True)


def test_remove_stale_dirs_keeps_running_containers_folders(tmp_path: Path) -> None:
    probe = subprocess.Popen([sys.executable, "-c", "pass"])
    probe.wait()  # a pid that no longer runs (reuse within this test is unlikely)
    dead = tmp_path / f"{DIR_PREFIX}{probe.pid}-abc"
    live = tmp_path / f"{DIR_PREFIX}{os.getpid()}-def"
    other = tmp_path / "clipper-sock-notapid-x"
    for folder in (dead, live, other):
        folder.mkdir()
    (dead / "predict.sock").write_bytes(b"")
    assert remove_stale_dirs(str(tmp_path)) == 1
    assert not dead.exists() and live.exists() and other.exists()


def test_frame_reader_reads_whole_split_and_large_frames() -> None:
    """Frames that arrive together, split across reads, and larger than the reused
    receive buffer all come out whole; a close mid-frame reads as None."""
    import socket
    import threading

    from model_containers.local_socket import _RECV_SIZE, _FrameReader, frame

    big = os.urandom(_RECV_SIZE * 3 + 5)
    small = [b"a" * 10, b"", b"b" * 300]
    ours, theirs = socket.socketpair()
    with ours, theirs:

        def send() -> None:
            theirs.sendall(b"".join(frame(1, i, p) for i, p in enumerate(small)))
            whole = frame(1, 9, big)
            for i in range(0, len(whole), 70_000):  # in pieces, as a busy socket delivers
                theirs.sendall(whole[i : i + 70_000])
            theirs.sendall(frame(1, 10, b"xyz")[:7])
            theirs.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        reader = _FrameReader(ours)
        got = []
        for _ in range(len(small) + 1):
            header = reader.read(HEADER.size)
            assert header is not None
            length, _kind, call_id = HEADER.unpack(header)
            payload = reader.read(length)
            got.append((call_id, payload))
        assert reader.read(HEADER.size) is None  # closed after 7 bytes of a header
        sender.join()
    assert got == [*enumerate(small), (9, big)]


def test_frame_reader_frame_takes_whole_frames_and_falls_back_to_reads() -> None:
    """``frame()`` returns a frame that came whole in one recv with its payload, and
    leaves the payload to ``read`` when frames arrive together or in pieces."""
    import socket

    from model_containers.local_socket import _FrameReader, frame

    ours, theirs = socket.socketpair()
    with ours, theirs:
        reader = _FrameReader(ours)
        theirs.sendall(frame(1, 7, b"whole"))
        assert reader.frame() == (5, 1, 7, b"whole")
        theirs.sendall(frame(1, 8, b"first") + frame(1, 9, b"second"))
        for call_id, payload in ((8, b"first"), (9, b"second")):
            got = reader.frame()
            assert got is not None
            length, kind, got_id, inline = got
            assert (kind, got_id) == (1, call_id)
            assert (inline if inline is not None else reader.read(length)) == payload
        split = frame(1, 10, b"split")
        theirs.sendall(split[:5])
        theirs.sendall(split[5:])
        got = reader.frame()
        assert got is not None and got[2] == 10
        assert (got[3] if got[3] is not None else reader.read(got[0])) == b"split"
        theirs.shutdown(socket.SHUT_WR)
        assert reader.frame() is None


def test_local_channel_takes_answers_whole_split_and_together() -> None:
    """An answer that arrives alone and whole, split across reads, or together with
    the next resolves its own call."""
    import socket

    from clipper_core.local_channel import KIND_OK

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        with theirs:
            _, channel = await loop.create_unix_connection(lambda: LocalChannel(loop), sock=ours)
            calls = [channel.call(KIND_PREDICT, b"q%d" % i) for i in range(5)]

            def answer(i: int) -> bytes:
                return HEADER.pack(2, KIND_OK, calls[i][0]) + b"a%d" % i

            theirs.sendall(answer(0))  # whole and alone
            assert await calls[0][1] == (KIND_OK, b"a0")
            theirs.sendall(answer(1)[:4])  # split inside the header
            await asyncio.sleep(0.05)
            theirs.sendall(answer(1)[4:] + answer(2))  # the rest, and the next one
            assert await calls[1][1] == (KIND_OK, b"a1")
            assert await calls[2][1] == (KIND_OK, b"a2")
            theirs.sendall(answer(4) + answer(3))  # out of order
            assert await calls[3][1] == (KIND_OK, b"a3")
            assert await calls[4][1] == (KIND_OK, b"a4")
            channel.close()

    asyncio.run(main())
