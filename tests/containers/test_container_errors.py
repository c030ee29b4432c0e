"""Failures: a model error fails its batch only; the client maps gRPC statuses.

Each test that predicts runs over the container's local socket and over gRPC."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from container_harness import Launcher, closure_args, model_class_args, pickle_closure, run_async

from bench.ports import free_port
from clipper_core.errors import BadInput, DeadlineExceeded, ModelError, ReplicaUnavailable
from clipper_core.replica_client import ReplicaClient


def test_model_exception_fails_the_batch_and_the_container_keeps_serving(
    containers: Launcher,
    transport: str,
) -> None:
    container = containers.start(*model_class_args("SumModel"))

    async def scenario() -> None:
        async with ReplicaClient(
            container.address, model_name="m", model_version="1", local=transport == "local"
        ) as client:
            await client.wait_ready(30)
            assert client.transport == transport
            with pytest.raises(ModelError) as info:
                await client.predict([np.array([1.0]), np.array([-1.0])], "doubles", timeout=30)
            assert str(info.value) == "ValueError: bad feature count"
            # The next batch is served normally.
            assert await client.predict([np.array([2.0, 3.0])], "doubles", timeout=30) == [5.0]
            assert await client.health()

    run_async(scenario)
    assert container.proc.poll() is None
    assert "Traceback" in container.stderr() and "bad feature count" in container.stderr()


def test_closure_exception_last_traceback_line(
    containers: Launcher, tmp_path: Path, transport: str
) -> None:
    class FeatureError(Exception):
        pass

    def broken(inputs: list[Any]) -> list[Any]:
        try:
            {}["missing"]
        except KeyError as exc:
            err = FeatureError("expected 3 features,\ngot 2")
            err.add_note("a note is not the last line")
            raise err from exc
        return inputs

    container = containers.start(*closure_args(pickle_closure(tmp_path / "f.pkl", broken), "ints"))

    async def scenario() -> None:
        async with ReplicaClient(container.address, local=transport == "local") as client:
            await client.wait_ready(30)
            with pytest.raises(ModelError) as info:
                await client.predict([np.array([1], dtype=np.int32)], "ints", timeout=30)
            message = str(info.value)
            assert message.endswith("FeatureError: expected 3 features,\ngot 2"), message
            assert "note" not in message

    run_async(scenario)


def test_wrong_output_count_is_a_clear_error(containers: Launcher, transport: str) -> None:
    container = containers.start(*model_class_args("WrongCountModel"))

    async def scenario() -> None:
        async with ReplicaClient(container.address, local=transport == "local") as client:
            await client.wait_ready(30)
            with pytest.raises(ModelError, match="returned 2 outputs for a batch of 3 inputs"):
                await client.predict([np.zeros(1)] * 3, "doubles", timeout=30)

    run_async(scenario)


def test_unserialisable_output_and_non_list_return(
    containers: Launcher, tmp_path: Path, transport: str
) -> None:
    def odd(inputs: list[Any]) -> Any:
        if inputs[0] == "object":
            return [object() for _ in inputs]
        if inputs[0] == "complex":
            return [np.array([1 + 2j]) for _ in inputs]
        if inputs[0] == "complex scalar":
            return [np.complex128(1 + 2j) for _ in inputs]
        if inputs[0] == "exit":
            raise SystemExit(3)
        return "one string for the whole batch"

    container = containers.start(*closure_args(pickle_closure(tmp_path / "f.pkl", odd), "strings"))

    async def scenario() -> None:
        async with ReplicaClient(container.address, local=transport == "local") as client:
            await client.wait_ready(30)
            with pytest.raises(ModelError, match=r"output 0: .*object is not JSON serialisable"):
                await client.predict(["object"], "strings", timeout=30)
            with pytest.raises(ModelError, match="model returned str; expected a list of 2"):
                await client.predict(["a", "b"], "strings", timeout=30)
            # No reply format carries complex numbers: the model's error, not the
            # frontend's failure to write the reply.
            for which in ("complex", "complex scalar"):
                with pytest.raises(ModelError, match=r"output 0: .*complex.* not JSON serial"):
                    await client.predict([which], "strings", timeout=30)
            # sys.exit() in predict is an error of the model like any other: the
            # call is answered and the container keeps serving.
            with pytest.raises(ModelError, match="SystemExit: 3"):
                await client.predict(["exit"], "strings", timeout=30)
            with pytest.raises(ModelError, match="object is not JSON serialisable"):
                await client.predict(["object"], "strings", timeout=30)

    run_async(scenario)


def test_wrong_input_type_is_bad_input(containers: Launcher, transport: str) -> None:
    container = containers.start(*model_class_args("SumModel"))

    async def scenario() -> None:
        async with ReplicaClient(container.address, local=transport == "local") as client:
            await client.wait_ready(30)
            with pytest.raises(BadInput, match="serves doubles inputs, got INTS"):
                await client.predict([np.array([1], dtype=np.int32)], "ints", timeout=30)
            # Caught before any RPC: a float vector is not ints.
            with pytest.raises(BadInput, match="input 0 is not a vector of ints"):
                await client.predict([np.array([1.5])], "ints")
            with pytest.raises(BadInput):
                await client.predict([b"raw"], "strings")

    run_async(scenario)


def test_deadline_exceeded_and_health_during_a_long_batch(
    containers: Launcher, transport: str
) -> None:
    """A slow batch: the caller's deadline passes; health is answered meanwhile."""
    container = containers.start(*model_class_args("SlowModel"))

    async def scenario() -> None:
        async with ReplicaClient(container.address, local=transport == "local") as client:
            await client.wait_ready(30)
            with pytest.raises(DeadlineExceeded):
                await client.predict([np.array([1.5])], "doubles", timeout=0.3)
            # The model is still sleeping (max-workers 1), yet health answers.
            assert await asyncio.wait_for(client.health(timeout=1.0), 2.0)
            # And the container serves again once the slow call is over.
            assert await client.predict([np.array([0.0])], "doubles", timeout=30) == ["done"]

    run_async(scenario)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_unreachable_replica(loop: str) -> None:
    address = f"127.0.0.1:{free_port()}"

    async def scenario() -> None:
        client = ReplicaClient(address, model_name="m", model_version="1", replica_id="r0")
        try:
            with pytest.raises(ReplicaUnavailable, match="m:1 replica r0"):
                await client.predict([np.zeros(2)], "doubles", timeout=5)
            with pytest.raises(ReplicaUnavailable):
                await client.wait_ready(0.5)
            assert await client.health(timeout=1) is False
            with pytest.raises(ReplicaUnavailable):
                await client.metadata(timeout=1)
        finally:
            await client.close()
        with pytest.raises(ReplicaUnavailable, match="closed"):
            await client.predict([np.zeros(2)], "doubles")

    run_async(scenario, loop=loop)


def test_replica_that_dies_is_unavailable(containers: Launcher, transport: str) -> None:
    container = containers.start(*model_class_args("SumModel"))

    async def scenario() -> None:
        async with ReplicaClient(container.address, local=transport == "local") as client:
            await client.wait_ready(30)
            assert await client.predict([np.ones(2)], "doubles", timeout=30) == [2.0]
            container.proc.kill()
            await asyncio.to_thread(container.proc.wait, 15)
            with pytest.raises(ReplicaUnavailable):
                await client.predict([np.ones(2)], "doubles", timeout=5)

    run_async(scenario)


def test_failing_load_exits_1(containers: Launcher) -> None:
    container = containers.start(*model_class_args("BrokenLoadModel"), wait_ready=False)
    assert container.wait(30) == 1
    assert "RuntimeError: weights file is corrupt" in container.stderr()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-class", "sample_models:NoSuchModel"], "has no attribute 'NoSuchModel'"),
        (["--model-class", "sample_models"], "package.module:ClassName"),
        (["--closure", "/nonexistent/f.pkl"], "cannot unpickle /nonexistent/f.pkl"),
    ],
)
def test_unloadable_model_exits_1(containers: Launcher, args: list[str], message: str) -> None:
    container = containers.start(
        "--model-name", "m", "--model-version", "1", "--input-type", "doubles", *args,
        wait_ready=False,
    )  # fmt: skip
    assert container.wait(30) == 1
    assert message in container.stderr()


def test_input_type_must_agree_with_the_model(containers: Launcher) -> None:
    container = containers.start(*model_class_args("SumModel", input_type="ints"), wait_ready=False)
    assert container.wait(30) == 2
    assert "declares input_type='doubles'" in container.stderr()
    untyped = containers.start(*model_class_args("EchoModel"), wait_ready=False)
    assert untyped.wait(30) == 2
    assert "--input-type is required" in untyped.stderr()
