"""ONNX through the real path: a graph fitted on generated data, run by ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

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
