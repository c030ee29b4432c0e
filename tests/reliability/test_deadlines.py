"""Deadlines and disconnects: a client's tighter deadline is honoured, expired work
never reaches the model, and a client that goes away withdraws its queued work --
without cancelling the answer that another client, coalesced on the same input,
still waits for.  The model records every input it sees; each test ends with a
later request that queues behind the withdrawn one, so "never reached the model"
is checked once the model has provably moved past it.  The same holds on the Open
Inference Protocol: the ``timeout`` request parameter (HTTP) and the call's
deadline (gRPC) bound a model queried by its own name."""

from __future__ import annotations

import concurrent.futures
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.reliability import models
from tests.reliability.conftest import http, predict_bytes, raw_request, wait_for
from tests.server.conftest import Running, start_server


@pytest.fixture
def running(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Running]:
    # The gRPC tests run on both transports of the gRPC port (indirect parameter).
    r = start_server(tmp_path / "state", grpc_transport=getattr(request, "param", "auto"))
    try:
        yield r
    finally:
        r.bg.stop()


def _deploy_logger(
    r: Running, tmp_path: Path, name: str, seconds: float, *, cache: bool
) -> tuple[Any, str]:
    log = str(tmp_path / f"{name}.calls")
    r.conn.register_application(name, "doubles", "-1", 30_000_000)
    r.conn.deploy_pickled(
        name,
        1,
        "doubles",
        models.make_logging_sleeper(log, seconds),
        batch_size=1,
        cache_enabled=cache,
    )
    r.conn.link_model_to_app(name, name)
    return r.server.dataplane.get_model_version(name, "1"), log


def _busy(mv: Any) -> bool:
    return any(info["busy"] for info in mv.replica_info())


def _read_response(sock: socket.socket) -> tuple[int, Any]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return status, json.loads(body)


def test_client_deadline_header_is_honoured(running: Running) -> None:
    running.conn.register_application("dl", "doubles", "-1", 30_000_000)
    running.conn.deploy_pickled("dl", 1, "doubles", models.make_sleeper(0.5), batch_size=1)
    running.conn.link_model_to_app("dl", "dl")
    url = f"{running.bg.query_url}/dl/predict"
    status, _, body = http("POST", url, {"input": [1.0]}, headers={"Clipper-Deadline-Ms": "100"})
    assert status == 200 and body["default"] is True and body["output"] == -1
    # Named as the client's deadline, not the app's objective (it said "the latency
    # objective (0 ms)" for a deadline under 1 ms).
    assert "client's deadline (Clipper-Deadline-Ms: 100 ms)" in body["default_explanation"]
    for bad in ("0", "-3", "soon", "1e30"):
        status, _, body = http("POST", url, {"input": [1.0]}, headers={"Clipper-Deadline-Ms": bad})
        assert status == 400 and "deadline" in body["cause"], (bad, body)
    status, _, body = http("POST", url, {"input": [2.0]})  # the app's 30 s objective
    assert status == 200 and body["default"] is False and body["output"] == 2.0


def test_expired_work_never_reaches_the_model(running: Running, tmp_path: Path) -> None:
    mv, log = _deploy_logger(running, tmp_path, "exp", 0.5, cache=False)
    url = f"{running.bg.query_url}/exp/predict"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(http, "POST", url, {"input": [1.0]})
        wait_for("the first request in flight", lambda: _busy(mv))
        # Queued behind a 0.5 s batch with a 50 ms deadline: it expires in the queue.
        status, _, body = http("POST", url, {"input": [2.0]}, headers={"Clipper-Deadline-Ms": "50"})
        assert status == 200 and body["default"] is True
        assert first.result(timeout=30)[0] == 200
    status, _, body = http("POST", url, {"input": [3.0]})
    assert status == 200 and body["output"] == 3.0
    assert models.read_calls(log) == [1.0, 3.0]
    assert mv.queue.stats()["expired"] >= 1


def test_a_shared_computation_outlives_its_first_requesters_deadline(
    running: Running, tmp_path: Path
) -> None:
    mv, log = _deploy_logger(running, tmp_path, "share", 0.5, cache=True)
    url = f"{running.bg.query_url}/share/predict"
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        first = pool.submit(http, "POST", url, {"input": [1.0]})
        wait_for("the first request in flight", lambda: _busy(mv))
        # Two requests for the same input share one computation; the first of them
        # gives up after 50 ms, the second waits up to 10 s.
        hasty = pool.submit(
            http, "POST", url, {"input": [2.0]}, headers={"Clipper-Deadline-Ms": "50"}
        )
        wait_for("the hasty request queued", lambda: len(mv.queue) >= 1)
        patient = pool.submit(
            http, "POST", url, {"input": [2.0]}, headers={"Clipper-Deadline-Ms": "10000"}
        )
        status, _, body = hasty.result(timeout=30)
        assert status == 200 and body["default"] is True
        status, _, body = patient.result(timeout=30)
        # The hasty request's expiry did not take the patient one's answer away.
        assert status == 200 and body["default"] is False and body["output"] == 2.0, body
        assert first.result(timeout=30)[0] == 200
    assert models.read_calls(log) == [1.0, 2.0]


def test_the_cache_switched_off_and_on_while_an_input_is_computed(
    running: Running, tmp_path: Path
) -> None:
    """An input being computed settles in the cache that reserved its key: the
    version's cache switched off meanwhile, its requester still gets the model's
    answer; switched on again, the input is answered (not left joining an entry
    that never settles)."""
    log = str(tmp_path / "tog.calls")
    model = models.make_logging_sleeper(log, 1.0)
    running.conn.register_application("tog", "doubles", "-1", 30_000_000)

    def deploy(cache: bool) -> str:
        return running.conn.deploy_pickled(
            "tog", 1, "doubles", model, batch_size=1, cache_enabled=cache
        )

    deploy(True)
    running.conn.link_model_to_app("tog", "tog")
    mv = running.server.dataplane.get_model_version("tog", "1")
    url = f"{running.bg.query_url}/tog/predict"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(http, "POST", url, {"input": [1.0]})
        wait_for("the first request in flight", lambda: _busy(mv))
        second = pool.submit(http, "POST", url, {"input": [2.0]})
        wait_for("the second request queued", lambda: len(mv.queue) == 1)
        assert deploy(False).startswith("updated")
        status, _, body = second.result(timeout=60)
        assert status == 200 and body["default"] is False and body["output"] == 2.0, body
        assert first.result(timeout=60)[0] == 200
    assert deploy(True).startswith("updated")
    for value in (2.0, 7.0):
        status, _, body = http("POST", url, {"input": [value]}, timeout=60)
        assert status == 200 and body["default"] is False and body["output"] == value, body


@pytest.mark.parametrize("cache", [False, True], ids=["uncached", "cached"])
def test_disconnected_client_withdraws_its_queued_work(
    running: Running, tmp_path: Path, cache: bool
) -> None:
    mv, log = _deploy_logger(running, tmp_path, f"dc{int(cache)}", 1.0, cache=cache)
    app = mv.name
    url = f"{running.bg.query_url}/{app}/predict"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(http, "POST", url, {"input": [1.0]})
        wait_for("the first request in flight", lambda: _busy(mv))
        sock = raw_request(running.server.query_port, predict_bytes(app, {"input": [2.0]}))
        wait_for("the second request queued", lambda: len(mv.queue) == 1)
        sock.close()  # the client gives up
        wait_for("its work withdrawn", lambda: mv.withdrawn >= 1)
        assert first.result(timeout=30)[0] == 200
    status, _, body = http("POST", url, {"input": [3.0]})
    assert status == 200 and body["output"] == 3.0
    assert models.read_calls(log) == [1.0, 3.0]  # 2.0 never reached the model


def test_disconnect_does_not_cancel_a_coalesced_waiter(running: Running, tmp_path: Path) -> None:
    mv, log = _deploy_logger(running, tmp_path, "co", 1.0, cache=True)
    port = running.server.query_port
    url = f"{running.bg.query_url}/co/predict"
    cache = running.server.dataplane.cache
    assert cache is not None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(http, "POST", url, {"input": [1.0]})
        wait_for("the first request in flight", lambda: _busy(mv))
        coalesced = cache.coalesced
        leaver = raw_request(port, predict_bytes("co", {"input": [2.0]}))
        wait_for("the input queued", lambda: len(mv.queue) == 1)
        stayer = raw_request(port, predict_bytes("co", {"input": [2.0]}))
        wait_for("the second request coalesced", lambda: cache.coalesced > coalesced)
        leaver.close()
        wait_for("the leaver's request withdrawn", lambda: mv.withdrawn >= 1)
        status, body = _read_response(stayer)  # still answered, by the model
        stayer.close()
        assert status == 200 and body["output"] == 2.0 and body["default"] is False
        assert first.result(timeout=30)[0] == 200
    assert models.read_calls(log) == [1.0, 2.0]
    assert mv.cancelled == 0

    # When every coalesced requester leaves, the shared input is withdrawn.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(http, "POST", url, {"input": [4.0]})
        wait_for("the next request in flight", lambda: _busy(mv))
        socks = [raw_request(port, predict_bytes("co", {"input": [5.0]})) for _ in range(2)]
        wait_for("both requests in", lambda: len(mv.queue) == 1 and cache.coalesced > coalesced + 1)
        for s in socks:
            s.close()
        wait_for("the shared input withdrawn", lambda: mv.cancelled == 1)
        assert first.result(timeout=30)[0] == 200
    status, _, body = http("POST", url, {"input": [6.0]})
    assert status == 200 and body["output"] == 6.0
    assert models.read_calls(log) == [1.0, 2.0, 4.0, 6.0]


def _oip_body(value: float, **parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 1], "data": [value]}]
    }
    if parameters:
        body["parameters"] = parameters
    return body


def _grpc_request(model: str, value: float, **parameters: Any) -> Any:
    req = service_pb2.ModelInferRequest(model_name=model)
    req.inputs.add(name="input", datatype="FP64", shape=[1, 1])
    req.raw_input_contents.append(np.array([value]).tobytes())
    for key, v in parameters.items():
        if isinstance(v, str):
            req.parameters[key].string_param = v
        elif isinstance(v, float):
            req.parameters[key].double_param = v
        else:
            req.parameters[key].int64_param = v
    return req


def _grpc_output(reply: Any) -> list[float]:
    return list(np.frombuffer(reply.raw_output_contents[0], dtype="<f8").tolist())


def _oip_output(body: Any) -> list[float]:
    return [float(v) for v in body["outputs"][0]["data"]]


def test_oip_timeout_parameter_drops_expired_work(running: Running, tmp_path: Path) -> None:
    mv, log = _deploy_logger(running, tmp_path, "otm", 1.0, cache=False)
    url = f"{running.bg.query_url}/v2/models/otm/infer"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(http, "POST", url, _oip_body(1.0))
        wait_for("the first request in flight", lambda: _busy(mv))
        # Queued behind a 1 s batch with a 50 ms timeout (µs, as Triton's): the
        # model is named directly (no application default), so it fails 504.
        status, _, body = http("POST", url, _oip_body(2.0, timeout=50_000))
        assert status == 504, body
        assert set(body) == {"error"}, body
        assert re.fullmatch(
            r"otm:1 did not answer within \d+ ms|deadline passed while queued in otm:1",
            body["error"],
        ), body
        status, _, body = first.result(timeout=30)
        assert status == 200 and _oip_output(body) == [1.0], body
    # A timeout that leaves time enough is no obstacle (and is echoed back).
    status, _, body = http("POST", url, _oip_body(3.0, timeout=20_000_000))
    assert status == 200 and _oip_output(body) == [3.0], body
    assert body["parameters"] == {"timeout": 20_000_000}
    assert models.read_calls(log) == [1.0, 3.0]  # 2.0 never reached the model
    stats = mv.queue.stats()
    assert stats["cancelled"] + stats["expired"] >= 1, stats


@pytest.mark.parametrize("running", ["h2", "aio"], indirect=True)
def test_oip_bad_timeout_parameter_is_400(running: Running, tmp_path: Path) -> None:
    _mv, log = _deploy_logger(running, tmp_path, "obad", 0.0, cache=False)
    url = f"{running.bg.query_url}/v2/models/obad/infer"
    for bad, shown in [
        (-5, "-5"),
        (0, "0"),
        (-0.5, "-0.5"),
        ("soon", "'soon'"),
        ("1000", "'1000'"),
        (True, "True"),
        ([1000], "[1000]"),
        ({"us": 1000}, "{'us': 1000}"),
    ]:
        status, _, body = http("POST", url, _oip_body(1.0, timeout=bad))
        assert status == 400, (bad, body)
        assert body == {
            "error": f"parameter 'timeout' must be a positive number of µs, got {shown}"
        }, bad
    # Over gRPC the same values end the call with INVALID_ARGUMENT.
    with grpc.insecure_channel(f"127.0.0.1:{running.server.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for bad, shown in [(-5, "-5"), (0, "0"), (-2.5, "-2.5"), ("soon", "'soon'")]:
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(_grpc_request("obad", 1.0, timeout=bad), timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
            assert info.value.details() == (
                f"parameter 'timeout' must be a positive number of µs, got {shown}"
            )
        reply = stub.ModelInfer(_grpc_request("obad", 4.0, timeout=10_000_000), timeout=30)
        assert _grpc_output(reply) == [4.0]
    status, _, body = http("POST", url, _oip_body(5.0, timeout=10_000_000))
    assert status == 200 and _oip_output(body) == [5.0], body
    # Refused requests never reached the model.
    assert models.read_calls(log) == [4.0, 5.0]


@pytest.mark.parametrize("running", ["h2", "aio"], indirect=True)
def test_grpc_deadline_drops_expired_work(running: Running, tmp_path: Path) -> None:
    mv, log = _deploy_logger(running, tmp_path, "gdl", 1.0, cache=False)
    with grpc.insecure_channel(f"127.0.0.1:{running.server.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        first = stub.ModelInfer.future(_grpc_request("gdl", 1.0), timeout=30)
        wait_for("the first request in flight", lambda: _busy(mv))
        # Queued behind a 1 s batch with a 100 ms call deadline: the client sees
        # DEADLINE_EXCEEDED, and the server withdraws the input from the queue.
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(_grpc_request("gdl", 2.0), timeout=0.1)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value
        assert _grpc_output(first.result(timeout=30)) == [1.0]

        # The deadline reaches the data plane: now that the model has a measured
        # batch latency (1 s), admission control refuses at once an input whose
        # call deadline is shorter than the expected wait behind a busy replica.
        busy = stub.ModelInfer.future(_grpc_request("gdl", 3.0), timeout=30)
        wait_for("the next request in flight", lambda: _busy(mv))
        rejected = mv.rejected_overload
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(_grpc_request("gdl", 4.0), timeout=0.1)
        assert info.value.code() in (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ), info.value
        wait_for("the admission refusal counted", lambda: mv.rejected_overload > rejected)
        assert _grpc_output(busy.result(timeout=30)) == [3.0]

        reply = stub.ModelInfer(_grpc_request("gdl", 5.0), timeout=30)
        assert _grpc_output(reply) == [5.0]
    assert models.read_calls(log) == [1.0, 3.0, 5.0]  # 2.0 and 4.0 never ran
    stats = mv.queue.stats()
    assert stats["cancelled"] + stats["expired"] >= 1, stats
