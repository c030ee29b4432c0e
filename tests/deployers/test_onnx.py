"""ONNX through the real path: a graph fitted on generated data, run by ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from tritonclient.utils import triton_to_np_dtype  # noqa: E402

from clipper_core.deployers import deploy_onnx_model  # noqa: E402
from tests.deployers.conftest import endpoint, link, metadata, serve, specs  # noqa: E402
from tests.server.conftest import Running  # noqa: E402

RNG = np.random.default_rng(11)


def fitted_linear_graph() -> onnx.ModelProto:
    """Least squares on generated data, as a MatMul + Add + Sigmoid graph."""
    x = RNG.normal(size=(200, 5))
    y = x @ RNG.normal(size=(5, 2)) + RNG.normal(scale=0.1, size=(200, 2))
    design = np.hstack([x, np.ones((200, 1))])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    w = numpy_helper.from_array(coef[:5].astype(np.float32), "W")
    b = numpy_helper.from_array(coef[5].astype(np.float32), "B")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "B"], ["scores"]),
            helper.make_node("Sigmoid", ["scores"], ["probability"]),
        ],
        "linear",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 5])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 2]),
        ],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_onnx_graph_served_like_in_process(server: Running, tmp_path: Path) -> None:
    model = fitted_linear_graph()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    queries = RNG.normal(size=(30, 5))
    expected_scores = session.run(["scores"], {"features": queries.astype(np.float32)})[0]
    expected_prob = session.run(["probability"], {"features": queries.astype(np.float32)})[0]

    endpoint(server, "onnx-scores")
    deploy_onnx_model(server.conn, "onnx-scores", 1, "doubles", model=model)
    link(server, "onnx-scores")
    path = tmp_path / "linear.onnx"
    onnx.save_model(model, str(path))
    endpoint(server, "onnx-prob")
    deploy_onnx_model(server.conn, "onnx-prob", 1, "doubles", model=str(path), output="probability")
    link(server, "onnx-prob")

    got = np.asarray(serve(server, "onnx-scores", queries), dtype=np.float32)
    np.testing.assert_array_equal(got, expected_scores)
    got = np.asarray(serve(server, "onnx-prob", queries), dtype=np.float32)
    np.testing.assert_array_equal(got, expected_prob)

    meta = metadata(server, "onnx-prob")
    assert meta.platform == "onnxruntime_onnx"
    # The input is what clients send (doubles, cast by the container); names and
    # shapes are the graph's.
    assert specs(meta.inputs) == [("features", "FP64", (-1, 5))]
    assert specs(meta.outputs) == [("probability", "FP32", (-1, 2))]


def test_a_graph_with_its_weights_beside_it_is_deployed_by_path(
    server: Running, tmp_path: Path
) -> None:
    # Models over 2 GB keep their weights in files beside the graph: only the
    # graph was copied, and the container could not start.
    model = fitted_linear_graph()
    folder = tmp_path / "external"
    folder.mkdir()
    path = folder / "linear.onnx"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        location="linear.onnx.data",
        size_threshold=0,
    )
    queries = RNG.normal(size=(8, 5))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(["scores"], {"features": queries.astype(np.float32)})[0]
    endpoint(server, "onnx-external")
    deploy_onnx_model(server.conn, "onnx-external", 1, "doubles", model=str(path))
    link(server, "onnx-external")
    got = np.asarray(serve(server, "onnx-external", queries), dtype=np.float32)
    np.testing.assert_array_equal(got, expected)


def test_onnx_func_gets_the_session(server: Running) -> None:
    model = fitted_linear_graph()

    def both_outputs(session, inputs):
        scores, prob = session.run(None, {"features": np.stack(inputs).astype(np.float32)})
        return [{"score": s.tolist(), "p": p.tolist()} for s, p in zip(scores, prob, strict=True)]

    endpoint(server, "onnx-func", "floats")
    deploy_onnx_model(
        server.conn, "onnx-func", 1, "floats", both_outputs, model.SerializeToString()
    )
    link(server, "onnx-func")
    queries = RNG.normal(size=(4, 5)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert serve(server, "onnx-func", queries) == both_outputs(session, list(queries))


def two_input_graph() -> onnx.ModelProto:
    """``total = a + b``: two inputs, which a func feeds from each query's halves."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["total"])],
        "pair_sum",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 2]),
        ],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def pair_sum(session, inputs):  # Clipper's func(model, inputs): it builds the feed
    rows = np.stack(inputs).astype(np.float32)
    (total,) = session.run(["total"], {"a": rows[:, :2], "b": rows[:, 2:]})
    return list(total)


def _infer_as_the_metadata_says(client: Any, module: Any, name: str, rows: np.ndarray) -> Any:
    """What a Triton client does: read the model's metadata, send what it names."""
    meta = client.get_model_metadata(name)
    inputs = meta["inputs"] if isinstance(meta, dict) else meta.inputs
    (spec,) = inputs
    spec_name = spec["name"] if isinstance(spec, dict) else spec.name
    datatype = spec["datatype"] if isinstance(spec, dict) else spec.datatype
    data = rows.astype(triton_to_np_dtype(datatype))
    tensor = module.InferInput(spec_name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return meta, client.infer(name, [tensor])


def test_onnx_func_metadata_is_what_the_func_takes(server: Running) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    endpoint(server, "onnx-pairs", "floats")
    deploy_onnx_model(server.conn, "onnx-pairs", 1, "floats", pair_sum, two_input_graph())
    link(server, "onnx-pairs")
    # The container's metadata: the func takes rows of floats, not the graph's a and b.
    meta = metadata(server, "onnx-pairs")
    assert specs(meta.inputs) == [("input", "FP32", (-1, -1))]
    rows = RNG.normal(size=(3, 4))
    want = rows[:, :2].astype(np.float32) + rows[:, 2:].astype(np.float32)

    http = httpclient.InferenceServerClient(server.bg.query_url.split("://")[1])
    try:
        described, answer = _infer_as_the_metadata_says(http, httpclient, "onnx-pairs", rows)
        assert [i["name"] for i in described["inputs"]] == ["input"]
        np.testing.assert_array_equal(answer.as_numpy("output"), want)
        # Its outputs, undeclared, are learned from that answer.
        assert http.get_model_metadata("onnx-pairs")["outputs"] == [
            {"name": "output", "datatype": "FP32", "shape": [-1, 2]}
        ]
    finally:
        http.close()
    grpc_client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.server.grpc_port}")
    try:
        _, answer = _infer_as_the_metadata_says(grpc_client, grpcclient, "onnx-pairs", rows)
        np.testing.assert_array_equal(answer.as_numpy("output"), want)
    finally:
        grpc_client.close()
    assert serve(server, "onnx-pairs", rows.astype(np.float32)) == [
        [float(v) for v in r] for r in want
    ]


def test_a_graph_of_several_inputs_takes_them_by_name_over_oip(server: Running) -> None:
    import tritonclient.http as httpclient

    endpoint(server, "onnx-named", "floats")
    deploy_onnx_model(server.conn, "onnx-named", 1, "floats", model=two_input_graph())
    link(server, "onnx-named")
    meta = metadata(server, "onnx-named")
    assert specs(meta.inputs) == [("a", "FP32", (-1, 2)), ("b", "FP32", (-1, 2))]
    assert specs(meta.outputs) == [("total", "FP32", (-1, 2))]
    a, b = RNG.normal(size=(3, 2)).astype(np.float32), RNG.normal(size=(3, 2)).astype(np.float32)
    http = httpclient.InferenceServerClient(server.bg.query_url.split("://")[1])
    try:
        described = http.get_model_metadata("onnx-named")
        tensors = []
        for spec, data in zip(described["inputs"], (a, b), strict=True):
            tensor = httpclient.InferInput(spec["name"], list(data.shape), spec["datatype"])
            tensor.set_data_from_numpy(data)
            tensors.append(tensor)
        answer = http.infer("onnx-named", tensors)
        np.testing.assert_array_equal(answer.as_numpy("total"), a + b)
    finally:
        http.close()
    # Clipper's REST API sends rows: that needs a func, and the error says so.
    status, reply = server.client.predict("onnx-named", {"input": [1.0, 2.0, 3.0, 4.0]})
    assert status == 500 and "query it over OIP" in reply["cause"], reply
