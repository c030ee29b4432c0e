"""A container whose PredictResponse does not decode (a broken or foreign
implementation of ``protos/container.proto``): its batch fails as a model error,
is split and retried input by input, and nothing is logged as the frontend's bug."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
from container_harness import run_async
from sample_models import SumModel

from clipper_core.dataplane.model_version import ModelVersion
from clipper_core.errors import ModelError
from model_containers._proto import container_pb2 as pb
from model_containers._proto import container_pb2_grpc as pb_grpc
from model_containers.health import SERVING, HealthServicer
from model_containers.server import SERVICE_NAME, ContainerInfo, ModelContainerServicer

#: TENSOR responses that do not decode, by what is wrong with them.
GARBAGE = {
    # 5 bytes of float64s (numpy: "buffer size must be a multiple of element size")
    "size": {"dtype": "<f8", "shape": [3], "data": b"\x00" * 5},
    # a dtype numpy does not know (TypeError, not ValueError)
    "dtype": {"dtype": "no-such-dtype", "shape": [], "data": b"\x00" * 8},
}


class _GarbageServicer(ModelContainerServicer):
    """The container's servicer (its Metadata and checks) with a Predict whose
    TENSOR answer does not decode; notes each batch's size."""

    def __init__(self, garbage: dict[str, Any]) -> None:
        super().__init__(ContainerInfo("m", "1", "doubles"))
        self.set_model(SumModel())
        self.garbage = garbage
        self.batches: list[int] = []
        self._lock = threading.Lock()

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> Any:
        n = len(request.offsets) - 1
        with self._lock:
            self.batches.append(n)
        offsets = list(range(n + 1))
        return pb.PredictResponse(encoding=pb.TENSOR, offsets=offsets, **self.garbage)


@pytest.fixture(params=sorted(GARBAGE))
def garbage_replica(request: pytest.FixtureRequest) -> Iterator[tuple[str, _GarbageServicer]]:
    servicer = _GarbageServicer(GARBAGE[request.param])
    executor = ThreadPoolExecutor(max_workers=4)
    server = grpc.server(executor)
    pb_grpc.add_ModelContainerServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health = HealthServicer()
    health.set_status(SERVICE_NAME, SERVING)
    health.add_to_server(server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None).wait()
        executor.shutdown(wait=True)


def test_an_undecodable_response_is_a_model_error_of_each_input(
    garbage_replica: tuple[str, _GarbageServicer], caplog: pytest.LogCaptureFixture
) -> None:
    address, servicer = garbage_replica

    async def scenario() -> list[BaseException]:
        mv = ModelVersion(
            "m",
            "1",
            "doubles",
            queue_capacity=16,
            max_batch_size=3,
            batch_size=3,
            controller="fixed",
            batch_wait=5.0,  # the three inputs go as one batch
        )
        try:
            await mv.add_replica("r0", address, ready_timeout=30)
            deadline = time.monotonic() + 30
            futures = [mv.submit(np.array([float(i)]), b"", deadline) for i in range(3)]
            errors: list[BaseException] = []
            for fut in futures:
                with pytest.raises(ModelError) as info:
                    await fut
                errors.append(info.value)
            return errors
        finally:
            await mv.close()

    with caplog.at_level(logging.WARNING):
        errors = run_async(scenario)
    assert [str(e).split(": ", 1)[0] for e in errors] == [
        f"m:1 replica r0 at {address} sent a bad PredictResponse"
    ] * 3
    # The batch of three, then each input alone (a model error may be one input's).
    assert sorted(servicer.batches) == [1, 1, 1, 3]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
