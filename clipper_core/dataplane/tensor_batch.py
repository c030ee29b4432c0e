"""Tensor queries: Open Inference Protocol requests in a model version's queue.

An OIP request is ONE queue item (a :class:`TensorQuery` inside the usual
``PendingQuery``) that carries all its rows: named tensors whose first dimension is
the request's batch.  It shares everything with Clipper's queries -- the bounded
queue, admission control, deadlines, the prediction cache and its coalescing of
identical misses, hand-back to another replica -- and the adaptive batch size
counts queue items, so a request of N rows counts once.

When a dispatcher takes a batch that holds tensor queries,
:func:`predict_tensor_batch` groups them by *signature* (input names, datatypes,
every dimension but the first, and the request parameters for the model),
concatenates each group's tensors along dimension 0 into one model call
(``PredictRequest.tensors``), and splits the output tensors back by each
request's row count, so every client gets exactly its own rows.  Requests of
different signatures in one batch make one call per signature, one after the
other; Clipper queries taken in the same batch make one more.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import sys
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from clipper_core.dataplane.futures import answer_entry
from clipper_core.errors import (
    BadInput,
    ClipperError,
    DeadlineExceeded,
    ModelError,
    ReplicaUnavailable,
)
from clipper_core.metrics import ModelVersionMetrics
from clipper_core.replica_client import ReplicaClient
from clipper_core.structures import QueueEntry
from model_containers._proto import container_pb2 as pb
from model_containers.tensors import DATATYPES, decode_bytes, encode_bytes

log = logging.getLogger("clipper_core.dataplane")

__all__ = ["TensorQuery", "TensorResult", "predict_tensor_batch"]

# Tensor queries share the cache (and its invalidation) with Clipper's inputs.  A
# Clipper input's key is its raw bytes, which a client chooses freely; prefixing
# tensor keys with a secret drawn at start-up keeps a crafted input from ever
# equalling one (keys are compared in full).
_KEY_PREFIX = b"\x00oip\x00" + secrets.token_bytes(16)


class BatchOwner(Protocol):
    """What a tensor batch reads of its model version (``ModelVersion`` is one)."""

    @property
    def key(self) -> str: ...

    @property
    def input_type(self) -> str: ...

    @property
    def batch_timeout(self) -> float: ...

    @property
    def metrics(self) -> ModelVersionMetrics: ...


class TensorQuery:
    """One request's input tensors, all with first dimension ``rows``.

    Attributes:
        names: Input names, in the model's declared order.
        datatypes: OIP datatype of each input.
        arrays: The tensors (BYTES: object arrays of ``bytes``); read-only views of
            the request body where numpy allows.
        rows: The shared first dimension.
        parameters: The request's parameters for the model, a JSON object with
            sorted keys (``b""`` for none): ``PredictRequest.parameters``.
        signature: What must agree for requests to share one model call.
    """

    __slots__ = ("arrays", "datatypes", "names", "parameters", "rows", "signature")

    def __init__(
        self,
        names: Sequence[str],
        datatypes: Sequence[str],
        arrays: Sequence[np.ndarray[Any, Any]],
        parameters: bytes = b"",
    ) -> None:
        self.names = tuple(names)
        self.datatypes = tuple(datatypes)
        self.arrays = tuple(arrays)
        self.parameters = parameters
        self.rows = int(self.arrays[0].shape[0])
        self.signature = (
            tuple(
                (n, d, a.shape[1:])
                for n, d, a in zip(self.names, self.datatypes, self.arrays, strict=True)
            ),
            parameters,
        )

    def cache_key(self) -> bytes:
        """Every input's name, datatype, shape and bytes, and the parameters,
        unambiguously framed."""
        parts = [_KEY_PREFIX, f"{len(self.parameters)}\x00".encode(), self.parameters]
        for name, datatype, arr in zip(self.names, self.datatypes, self.arrays, strict=True):
            data = tensor_bytes(datatype, arr)
            header = f"{name}\x00{datatype}\x00{list(arr.shape)}\x00{len(data)}\x00"
            parts.append(header.encode())
            parts.append(data)
        return b"".join(parts)


class TensorResult:
    """One request's output tensors: name -> (datatype, array with its rows)."""

    __slots__ = ("outputs",)

    def __init__(self, outputs: dict[str, tuple[str, np.ndarray[Any, Any]]]) -> None:
        self.outputs = outputs

    def __sizeof__(self) -> int:
        # What the prediction cache charges for this entry.
        size = object.__sizeof__(self) + sys.getsizeof(self.outputs)
        for _, arr in self.outputs.values():
            size += arr.nbytes
            if arr.dtype.kind == "O":
                size += sum(len(v) for v in arr.flat)
        return size


def tensor_bytes(datatype: str, arr: np.ndarray[Any, Any]) -> bytes:
    """The wire bytes of a tensor: little-endian row-major, BYTES length-prefixed."""
    if datatype == "BYTES":
        return encode_bytes(arr)
    return np.ascontiguousarray(arr).tobytes()


def _decode_output(tensor: pb.Tensor, rows: int) -> tuple[str, np.ndarray[Any, Any]]:
    dtype = DATATYPES.get(tensor.datatype)
    shape = tuple(map(int, tensor.shape[:]))
    if dtype is None:
        raise ModelError(f"output {tensor.name!r} has unknown datatype {tensor.datatype!r}")
    if not shape or shape[0] != rows:
        raise ModelError(
            f"output {tensor.name!r} has shape {list(shape)}; the batch has {rows} rows"
        )
    count = math.prod(shape)
    try:
        if tensor.datatype == "BYTES":
            arr = decode_bytes(tensor.data, count)
        else:
            arr = np.frombuffer(tensor.data, dtype=dtype, count=count)
    except ValueError as exc:
        raise ModelError(f"output {tensor.name!r} does not match its shape: {exc}") from None
    return tensor.datatype, arr.reshape(shape)


def _is_fatal(exc: BaseException) -> bool:
    # What the dispatcher itself must handle: a replica gone (hand the batch
    # back) or hung (recycle it).  Anything else fails only its own group.
    return isinstance(exc, (ReplicaUnavailable, DeadlineExceeded, asyncio.CancelledError))


async def predict_tensor_batch(
    mv: BatchOwner, client: ReplicaClient, entries: Sequence[QueueEntry]
) -> list[Any]:
    """Serve a batch holding tensor queries; resolve each entry's future.

    Returns one placeholder per entry (every future is already resolved).  A
    replica failure or an RPC timeout raises, for the dispatcher to hand back or
    fail what is still unresolved; any other error fails only the requests of the
    model call it came from.
    """
    plain: list[QueueEntry] = []
    groups: dict[tuple[Any, ...], list[QueueEntry]] = {}
    for entry in entries:
        if entry.future.done():
            continue  # withdrawn, or expired
        query = entry.item.input
        if type(query) is TensorQuery:
            groups.setdefault(query.signature, []).append(entry)
        else:
            plain.append(entry)
    if plain:
        try:
            outputs = await client.predict(
                [e.item.input for e in plain], mv.input_type, timeout=mv.batch_timeout
            )
        except BaseException as exc:
            if _is_fatal(exc) or not isinstance(exc, Exception):
                raise
            _fail_group(mv, plain, exc)
        else:
            alone = len(plain) == 1
            for entry, output in zip(plain, outputs, strict=True):
                if not entry.future.done():
                    answer_entry(entry.future, output, alone=alone)
    for group in groups.values():
        try:
            await _predict_group(mv, client, group)
        except BaseException as exc:
            if _is_fatal(exc) or not isinstance(exc, Exception):
                raise
            if isinstance(exc, BadInput | ModelError) and len(group) > 1:
                # The model refused or failed the merged call: find whose input it
                # was by sending each request on its own, so the others still get
                # answers (as the dispatcher does for other batches).
                for entry in group:
                    if entry.future.done():
                        continue
                    try:
                        await _predict_group(mv, client, [entry])
                    except BaseException as one_exc:
                        if _is_fatal(one_exc) or not isinstance(one_exc, Exception):
                            raise
                        _fail_group(mv, [entry], one_exc)
                continue
            _fail_group(mv, group, exc)
    return [None] * len(entries)


def _fail_group(mv: BatchOwner, group: Sequence[QueueEntry], exc: Exception) -> None:
    if not isinstance(exc, ClipperError):
        log.error("tensor batch of %s failed", mv.key, exc_info=exc)
        exc = ModelError(f"{type(exc).__name__}: {exc}")
    mv.metrics.error(exc.kind, len(group))
    for entry in group:
        if not entry.future.done():
            entry.future.set_exception(exc)


async def _predict_group(mv: BatchOwner, client: ReplicaClient, group: list[QueueEntry]) -> None:
    """One model call for requests of one signature."""
    queries: list[TensorQuery] = [e.item.input for e in group]
    first = queries[0]
    total = sum(q.rows for q in queries)
    tensors: list[pb.Tensor] = []
    for i, (name, datatype) in enumerate(zip(first.names, first.datatypes, strict=True)):
        parts = [q.arrays[i] for q in queries]
        arr = parts[0] if len(parts) == 1 else np.concatenate(parts)
        tensors.append(
            pb.Tensor(
                name=name,
                datatype=datatype,
                shape=list(arr.shape),
                data=tensor_bytes(datatype, arr),
            )
        )
    started = time.monotonic()
    answer = await client.predict_tensors(
        tensors, mv.input_type, parameters=first.parameters, timeout=mv.batch_timeout
    )
    log.debug(
        "%s: tensor call of %d requests, %d rows, %.1f ms",
        mv.key,
        len(group),
        total,
        (time.monotonic() - started) * 1000,
    )
    outputs: dict[str, tuple[str, np.ndarray[Any, Any]]] = {}
    for tensor in answer:
        if tensor.name in outputs:
            raise ModelError(f"the model answered output {tensor.name!r} twice")
        outputs[tensor.name] = _decode_output(tensor, total)
    start = 0
    for entry, query in zip(group, queries, strict=True):
        end = start + query.rows
        result = TensorResult({name: (dt, arr[start:end]) for name, (dt, arr) in outputs.items()})
        start = end
        if not entry.future.done():
            answer_entry(entry.future, result, alone=len(group) == 1)
