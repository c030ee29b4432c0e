"""A request against a model's tensor specs, and the specs against its answers.

:func:`build_query` checks an Open Inference Protocol request against the input
specs a model advertises and makes the queue item it becomes; a datatype that
converts to the advertised one without loss (FP32 to a model of ``doubles``,
INT16 to one of ``ints``...) is converted rather than refused.
:func:`learn_outputs` corrects the advertised outputs of a model that declared
none (its container reports one ``output`` of BYTES) from its first answer: a
closure that returns floats is then advertised as FP64.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from clipper_core.dataplane.tensor_batch import TensorQuery, TensorResult
from clipper_core.errors import BadInput
from clipper_core.oip.tensors import DATATYPES, InferRequest, InputTensor, OutputTensor

__all__ = [
    "SERVER_PARAMETERS",
    "build_query",
    "converts_losslessly",
    "learn_outputs",
    "model_parameters",
    "select_outputs",
]


def converts_losslessly(given: str, wanted: str) -> bool:
    """Whether every value of OIP datatype ``given`` is exactly one of ``wanted``
    (numpy's safe casts, less the 64-bit integers to FP64, which round above 2**53)."""
    if given == wanted:
        return True
    src, dst = DATATYPES.get(given), DATATYPES.get(wanted)
    if src is None or dst is None or src.kind == "O" or dst.kind == "O":
        return False
    if src.kind in "iu" and dst.kind == "f" and src.itemsize >= dst.itemsize:
        return False
    return bool(np.can_cast(src, dst, casting="safe"))


def _converted(t: InputTensor, datatype: str) -> InputTensor:
    if t.datatype == datatype:
        return t
    array = t.array.astype(DATATYPES[datatype])
    return InputTensor(t.name, datatype, t.shape, array)


#: What a container that declares no outputs reports (``default_output_specs``).
_UNDECLARED_OUTPUT = {"name": "output", "datatype": "BYTES", "shape": [-1]}


def learn_outputs(meta: dict[str, Any], result: TensorResult) -> None:
    """Correct ``meta``'s outputs, in place, from a model's answer when the model
    declared none: its one ``output`` then gets the datatype and shape (every
    dimension but the batch's) that it answered with."""
    outputs = meta.get("outputs")
    if not outputs or len(outputs) != 1:
        return
    first = outputs[0]
    # (no copy of a plain dict, the usual case, per request)
    if (first if type(first) is dict else dict(first)) != _UNDECLARED_OUTPUT:
        return
    found = result.outputs.get("output")
    if found is None or found[0] == "BYTES":
        return
    datatype, array = found
    meta["outputs"] = [{"name": "output", "datatype": datatype, "shape": [-1, *array.shape[1:]]}]


#: Input specs read once per metadata document: ``id(specs) -> (specs, plan)``;
#: the entry holds ``specs`` so that its id is not reused while it is here.
_PLANS: dict[int, tuple[object, list[tuple[str, str, list[int]]]]] = {}


def _input_plan(specs: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, list[int]]]:
    """Each input's ``(name, datatype, shape)`` of ``specs``, read once: a model's
    metadata is fetched once and then serves every request."""
    hit = _PLANS.get(id(specs))
    if hit is not None and hit[0] is specs:
        return hit[1]
    plan = [
        (str(s.get("name", "")), str(s.get("datatype") or ""), [int(d) for d in s.get("shape", [])])
        for s in specs
    ]
    if len(_PLANS) >= 256:  # models come and go: forget the old documents
        _PLANS.clear()
    _PLANS[id(specs)] = (specs, plan)
    return plan


def _names(plan: list[tuple[str, str, list[int]]]) -> list[str]:
    return [name for name, _, _ in plan]


def _fits(got: Sequence[int], want: list[int]) -> bool:
    """Whether shape ``got`` matches ``want`` (-1: any size there)."""
    if len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):  # a loop, not any(): no generator per request
        if w >= 0 and g != w:
            return False
    return True


def build_query(key: str, specs: Sequence[Mapping[str, Any]], request: InferRequest) -> TensorQuery:
    """Check a request against the model's input specs; the queue item it becomes.

    Raises:
        BadInput: A missing, unknown or repeated input; a datatype or shape that
            the specs refuse; inputs that disagree on the batch dimension.
    """
    given: dict[str, InputTensor] = {}
    for t in request.inputs:
        if t.name in given:
            raise BadInput(f"input {t.name!r} appears twice")
        given[t.name] = t
    ordered: list[InputTensor] = []
    if specs:
        plan = _input_plan(specs)
        for name, datatype, shape in plan:
            found = given.pop(name, None)
            if found is None:
                raise BadInput(f"missing input {name!r}: model {key} takes {_names(plan)}")
            if datatype and found.datatype != datatype:
                if not converts_losslessly(found.datatype, datatype):
                    raise BadInput(
                        f"input {name!r} is {found.datatype}, but model {key} takes"
                        f" {datatype} (only a conversion without loss is made for you)"
                    )
                found = _converted(found, datatype)
            if shape and not _fits(found.shape, shape):
                raise BadInput(
                    f"input {name!r} has shape {list(found.shape)}, but model {key} takes"
                    f" {shape} (-1: any size)"
                )
            ordered.append(found)
        if given:
            raise BadInput(f"unknown input(s) {sorted(given)}: model {key} takes {_names(plan)}")
    else:
        ordered = list(request.inputs)
    rows = -1
    for t in ordered:
        if not t.shape:
            raise BadInput(f"input {t.name!r} needs a batch dimension (its first)")
        if rows >= 0 and t.shape[0] != rows:
            raise BadInput(
                f"inputs disagree on the batch dimension: {t.name!r} has {t.shape[0]}"
                f" rows, the others {rows}"
            )
        rows = t.shape[0]
    if rows < 1:
        raise BadInput("the batch dimension (the first of every input) must be at least 1")
    return TensorQuery(
        [t.name for t in ordered],
        [t.datatype for t in ordered],
        [t.array for t in ordered],
        model_parameters(request.parameters),
    )


#: Request parameters the server acts on itself; the model never sees them.
SERVER_PARAMETERS = frozenset({"timeout", "binary_data_output"})


def model_parameters(parameters: Mapping[str, Any]) -> bytes:
    """The request's parameters for the model: a JSON object, keys sorted, so that
    equal parameters make equal bytes (they key the cache and group calls)."""
    if not parameters:
        return b""
    mine = {k: v for k, v in parameters.items() if k not in SERVER_PARAMETERS}
    if not mine:
        return b""
    return orjson.dumps(mine, option=orjson.OPT_SORT_KEYS)


def select_outputs(key: str, result: TensorResult, request: InferRequest) -> list[OutputTensor]:
    """The outputs the client asked for (all by default), each binary or not."""
    outputs = result.outputs
    if request.outputs is None or not request.outputs:
        return [
            OutputTensor(name, dt, arr, request.binary_output)
            for name, (dt, arr) in outputs.items()
        ]
    chosen: list[OutputTensor] = []
    for wanted in request.outputs:
        found = outputs.get(wanted.name)
        if found is None:
            raise BadInput(
                f"model {key} has no output {wanted.name!r}; it answers {sorted(outputs)}"
            )
        binary = request.binary_output if wanted.binary is None else wanted.binary
        chosen.append(OutputTensor(wanted.name, found[0], found[1], binary))
    return chosen
