"""Polling for a fast local answer (``LocalChannel(reply_spin=...)``): the loop
polls instead of sleeping while a call of one input is out, stops when the answer
is in or the spin is spent, never for slow channels, batches or one-CPU hosts."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from container_harness import Launcher, model_class_args, run_async

from clipper_core.config import ServerConfig
from clipper_core.local_channel import (
    DEFAULT_REPLY_SPIN_US,
    HEADER,
    KIND_OK,
    KIND_PREDICT,
    LocalChannel,
    reply_spin_for_host,
)
from clipper_core.replica_client import ReplicaClient
from clipper_core.replica_tls import server_connector
from clipper_core.replica_tokens import ReplicaTokens
from model_containers._proto import container_pb2 as pb


async def _channel(reply_spin: float) -> tuple[LocalChannel, socket.socket]:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    _, channel = await loop.create_unix_connection(
        lambda: LocalChannel(loop, reply_spin), sock=ours
    )
    return channel, theirs


def _answer(call_id: int, payload: bytes = b"ok") -> bytes:
    return HEADER.pack(len(payload), KIND_OK, call_id) + payload


def test_the_loop_polls_until_the_answer_is_in() -> None:
    async def main() -> None:
        channel, theirs = await _channel(reply_spin=10.0)  # ample: the answer ends it
        with theirs:
            call_id, fut = channel.call(KIND_PREDICT, b"q", poll=True)
            assert channel.polling and channel.polled_calls == 1
            for _ in range(3):  # the loop keeps turning without sleeping
                await asyncio.sleep(0)
                assert channel.polling
            theirs.sendall(_answer(call_id))
            assert await fut == (KIND_OK, b"ok")
            channel.forget(call_id)
            for _ in range(3):
                await asyncio.sleep(0)
            assert not channel.polling
            assert channel.round_trip > 0.0
            # The next call, sent in the turn its predecessor's answer came in
            # (before the poll saw it), polls on for its own full spin.
            call_id, fut = channel.call(KIND_PREDICT, b"q", poll=True)
            theirs.sendall(_answer(call_id))
            assert await fut == (KIND_OK, b"ok")
            call_id, fut = channel.call(KIND_PREDICT, b"q2", poll=True)
            assert channel.polling and channel.polled_calls == 3
            for _ in range(3):
                await asyncio.sleep(0)
                assert channel.polling
            theirs.sendall(_answer(call_id))
            assert await fut == (KIND_OK, b"ok")
            channel.close()

    asyncio.run(main())


def test_polling_stops_when_the_spin_is_spent_and_the_late_answer_still_comes() -> None:
    async def main() -> None:
        channel, theirs = await _channel(reply_spin=0.002)
        with theirs:
            call_id, fut = channel.call(KIND_PREDICT, b"q", poll=True)
            assert channel.polling
            await asyncio.sleep(0.1)  # far past the spin: the loop sleeps again
            assert not channel.polling and not fut.done()
            theirs.sendall(_answer(call_id, b"late"))
            assert await fut == (KIND_OK, b"late")
            channel.forget(call_id)
            # That round trip took longer than the spin: the next call sleeps at once.
            assert channel.round_trip > 0.002
            call_id, fut = channel.call(KIND_PREDICT, b"q", poll=True)
            assert not channel.polling and channel.polled_calls == 1
            theirs.sendall(_answer(call_id))
            assert await fut == (KIND_OK, b"ok")
            channel.close()

    asyncio.run(main())


def test_no_polling_for_batches_busy_channels_or_a_zero_spin() -> None:
    async def main() -> None:
        off, theirs_off = await _channel(reply_spin=0.0)
        channel, theirs = await _channel(reply_spin=10.0)
        with theirs_off, theirs:
            call_id, fut = off.call(KIND_PREDICT, b"q", poll=True)
            assert not off.polling and off.polled_calls == 0
            theirs_off.sendall(_answer(call_id))
            assert await fut == (KIND_OK, b"ok")

            first, fut1 = channel.call(KIND_PREDICT, b"batch", poll=False)
            assert not channel.polling  # a batch of several inputs
            second, fut2 = channel.call(KIND_PREDICT, b"one", poll=True)
            assert not channel.polling  # the channel was busy: no new poll
            theirs.sendall(_answer(second) + _answer(first))
            assert await fut1 == (KIND_OK, b"ok") and await fut2 == (KIND_OK, b"ok")
            assert channel.polled_calls == 0
            off.close()
            channel.close()

    asyncio.run(main())


def test_a_lost_connection_ends_the_polling_and_fails_the_call() -> None:
    async def main() -> None:
        channel, theirs = await _channel(reply_spin=10.0)
        _, fut = channel.call(KIND_PREDICT, b"q", poll=True)
        assert channel.polling
        theirs.close()
        with pytest.raises(ConnectionResetError):
            await fut
        for _ in range(3):
            await asyncio.sleep(0)
        assert not channel.polling

    asyncio.run(main())


def test_reply_spin_for_host() -> None:
    with pytest.raises(ValueError, match="reply_spin_us must be >= 0"):
        reply_spin_for_host(-1)
    assert reply_spin_for_host(0) == 0.0
    assert ServerConfig().reply_spin_us == DEFAULT_REPLY_SPIN_US
    # A process allowed one CPU never polls: it would take the CPU from the
    # container it waits on.
    one_cpu = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
            "from clipper_core.local_channel import reply_spin_for_host as f; print(f(250))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert one_cpu.stdout.strip() == "0.0"
    if len(os.sched_getaffinity(0)) > 1:
        assert reply_spin_for_host(250) == pytest.approx(250e-6)


def test_the_servers_connector_gives_its_clients_the_configured_spin() -> None:
    tokens = ReplicaTokens(b"s" * 32)
    for cfg, expected in (
        (ServerConfig(reply_spin_us=0), 0.0),
        (ServerConfig(reply_spin_us=120), reply_spin_for_host(120)),
        (ServerConfig(reply_spin_us=120, container_manager="kubernetes"), reply_spin_for_host(120)),
    ):
        connect = server_connector(cfg, tokens)
        for replica_id in ("0", "hand-registered"):
            client = connect("127.0.0.1:1", "m", "1", replica_id)
            assert client.reply_spin == expected


def test_a_replica_client_polls_for_one_input_not_for_a_batch(containers: Launcher) -> None:
    container = containers.start(*model_class_args("SumModel"))

    async def scenario() -> None:
        async with ReplicaClient(container.address, reply_spin=0.05) as client:
            await client.wait_ready(30)
            assert client.transport == "local"
            assert await client.predict([np.arange(3.0)], "doubles", timeout=30) == [3.0]
            channel = client._local
            assert channel is not None and channel.polled_calls == 1
            batch = [np.ones(2), np.ones(3)]
            assert await client.predict(batch, "doubles", timeout=30) == [2.0, 3.0]
            assert channel.polled_calls == 1
            # One input again, answered as before.
            assert await client.predict([np.ones(4)], "doubles", timeout=30) == [4.0]
            assert channel.polled_calls == 2

    run_async(scenario)


def test_tensor_batches_poll_for_one_row(containers: Launcher) -> None:
    container = containers.start(*model_class_args("SumModel"))

    async def scenario() -> None:
        async with ReplicaClient(container.address, reply_spin=0.05) as client:
            await client.wait_ready(30)
            channel_calls = []
            for rows in (1, 3):
                x = np.ones((rows, 2), "<f8")
                tensor = pb.Tensor(name="input", datatype="FP64", shape=[rows, 2], data=x.tobytes())
                (out,) = await client.predict_tensors([tensor], "doubles", timeout=30)
                assert list(out.shape) == [rows]
                assert np.frombuffer(out.data, "<f8").tolist() == [2.0] * rows
                assert client._local is not None
                channel_calls.append(client._local.polled_calls)
            assert channel_calls == [1, 1]

    run_async(scenario)
