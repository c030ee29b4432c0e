"""Pipelines over the Open Inference Protocol (HTTP and gRPC).

A pipeline takes one input tensor of its input type (``ints``: INT32, ``floats``:
FP32, ``doubles``: FP64, ``strings`` and ``bytes``: BYTES) whose first dimension
is the batch: each row is one query, walked through the pipeline as
``POST /<pipeline>/predict`` would walk it (``input_batch``).  The reply holds one
output, ``output``, a row per query; when any row got the pipeline's default
output, the response parameters say ``default: true`` with the explanation, as
for an application.  A stage's error fails the request, with the stage named; so
does a stage whose model has no live replica, at once (503 / UNAVAILABLE, naming
the model versions).

Applications with a selection policy still answer no OIP inference
(``service.policy_refusal``): only a pipeline's router is served here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

from clipper_core.clipper_api import InputKeys
from clipper_core.dataplane import Application
from clipper_core.errors import BadInput, NoLiveReplica, NotFound
from clipper_core.oip.tensors import InferRequest, OutputTensor
from clipper_core.pipelines.runtime import PipelineRouter
from model_containers.tensors import INPUT_TYPE_DATATYPES, datatype_of, outputs_to_tensor

if TYPE_CHECKING:
    from clipper_core.dataplane import QueryView

__all__ = ["infer", "is_pipeline", "metadata", "ready"]


def is_pipeline(app: Application | None) -> TypeGuard[Application]:
    """Whether ``app`` is a pipeline's application."""
    return app is not None and isinstance(app.selector, PipelineRouter)


def metadata(app: Application) -> dict[str, Any]:
    """``GET /v2/models/<pipeline>``: one input of its type, one output."""
    return {
        "name": app.name,
        "versions": [],
        "platform": "clipper_core_pipeline",
        "inputs": [
            {"name": "input", "datatype": INPUT_TYPE_DATATYPES[app.input_type], "shape": [-1, -1]}
        ],
        "outputs": [{"name": "output", "datatype": "BYTES", "shape": [-1]}],
    }


def ready(dataplane: QueryView, app: Application) -> bool:
    """Whether every model version the pipeline's stages ask (a pinned one, else
    the model's current one) has a replica that serves."""
    router = app.selector
    assert isinstance(router, PipelineRouter)
    for stage in router.graph.stages.values():
        if stage.model is None:
            continue  # a join without a model
        model = dataplane.models.get(stage.model)
        try:
            mv = None if model is None else model.version_for(stage.version)
        except NotFound:
            return False
        if mv is None or not any(s.up for s in mv.replicas.values()):
            return False
    return True


def _rows(app: Application, request: InferRequest) -> list[Any]:
    """The queries of ``request``: one per row of its one input tensor."""
    if len(request.inputs) != 1:
        raise BadInput(f"pipeline {app.name!r} takes one input tensor, got {len(request.inputs)}")
    tensor = request.inputs[0]
    want = INPUT_TYPE_DATATYPES[app.input_type]
    if tensor.datatype != want:
        raise BadInput(
            f"input {tensor.name!r} is {tensor.datatype}, but pipeline {app.name!r}"
            f" takes {want} ({app.input_type})"
        )
    if not tensor.shape or tensor.shape[0] < 1:
        raise BadInput(f"input {tensor.name!r} needs a batch dimension (its first) of at least 1")
    rows = tensor.shape[0]
    arr = tensor.array.reshape(rows, -1)
    if want != "BYTES":
        if arr.shape[1] == 0:
            # The entry's model would refuse each empty row (REST answers it
            # 400 "input must not be empty"): refuse the request before any stage.
            raise BadInput(
                f"input {tensor.name!r} of shape {list(tensor.shape)} has empty rows:"
                " a query must not be empty"
            )
        return list(np.ascontiguousarray(arr))
    if arr.shape[1] != 1:
        raise BadInput(f"input {tensor.name!r}: a {app.input_type} query is one element per row")
    out: list[Any] = []
    for value in arr[:, 0]:
        if app.input_type == "strings":
            try:
                value = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            except UnicodeDecodeError as exc:
                raise BadInput(f"input {tensor.name!r} is not UTF-8 text: {exc}") from None
        elif isinstance(value, str):
            value = value.encode("utf-8")
        out.append(value)
    return out


async def infer(
    dataplane: QueryView, app: Application, request: InferRequest, deadline: float
) -> tuple[dict[str, Any], list[OutputTensor]]:
    """Answer ``request`` with the pipeline's outputs by ``deadline``.

    Returns:
        The response parameters and its one output tensor.
    """
    if request.outputs and [o.name for o in request.outputs] != ["output"]:
        names = sorted(o.name for o in request.outputs)
        raise BadInput(f"pipeline {app.name!r} answers one output, 'output'; asked for {names}")
    inputs = _rows(app, request)
    outcomes = await dataplane.predict(
        app.name, inputs, InputKeys(inputs, app.input_type), deadline=deadline
    )
    dead = sorted({m for o in outcomes if o.unavailable for m in o.unavailable})
    if dead:
        raise NoLiveReplica(dead)
    arr = outputs_to_tensor([o.output for o in outcomes], len(outcomes))
    params = dict(request.parameters)
    defaults = [o for o in outcomes if o.default]
    if defaults:
        params["default"] = True
        params["default_explanation"] = defaults[0].explanation
    binary = request.binary_output
    if request.outputs and request.outputs[0].binary is not None:
        binary = request.outputs[0].binary
    return params, [OutputTensor("output", datatype_of(arr.dtype), arr, binary)]
