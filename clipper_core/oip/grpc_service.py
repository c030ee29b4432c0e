"""The Open Inference Protocol's gRPC service, ``inference.GRPCInferenceService``.

A server on the frontend's event loop, on its own port
(``ServerConfig.grpc_port``): the HTTP/2 of :mod:`clipper_core.oip.h2_grpc` on a
cleartext port (several times cheaper per call), ``grpc.aio`` with TLS; either
answers ServerLive, ServerReady, ModelReady,
ServerMetadata, ModelMetadata and ModelInfer through the same
:class:`~clipper_core.oip.service.InferenceService` as the REST API.

Inputs come as ``raw_input_contents`` (decoded zero-copy with ``np.frombuffer``)
or as typed ``contents``; outputs always go back as ``raw_output_contents``, as
Triton does.  Errors end the call with the status of the error
(``ClipperError.grpc_code``): INVALID_ARGUMENT for a bad request, NOT_FOUND for an
unknown model or version, UNAVAILABLE / RESOURCE_EXHAUSTED when the model cannot
take it, DEADLINE_EXCEEDED when its deadline passes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from clipper_core._proto import oip_service_pb2 as pb
from clipper_core._proto import oip_service_pb2_grpc as pb_grpc
from clipper_core.errors import BadInput, ClipperError
from clipper_core.http.body_budget import BodyBudget
from clipper_core.oip.h2_frames import UnaryHandler, unary_handler
from clipper_core.oip.h2_limits import H2Limits
from clipper_core.oip.h2_server import H2GrpcServer
from clipper_core.oip.service import InferenceService, InferReply
from clipper_core.oip.tensors import (
    DATATYPES,
    InferRequest,
    InputTensor,
    RequestedOutput,
    check_datatype,
    check_shape,
    decode_binary,
    element_count,
)
from model_containers.tensors import encode_bytes

log = logging.getLogger("clipper_core.oip")

__all__ = ["GrpcInferenceServer", "InferenceServicer", "read_tls_files"]

#: Typed contents field and its element dtype, per datatype.  FP16 has none.
_CONTENTS: dict[str, tuple[str, np.dtype[Any]]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
}


class _Uint64(int):
    """A parameter that came as ``uint64_param``: echoed back as one (an
    ``int`` everywhere else; a typed client reading the echo found 0)."""

    __slots__ = ()


def _param_value(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    if which == "uint64_param":
        return _Uint64(p.uint64_param)
    return None if which is None else getattr(p, which)


def parameters_to_dict(params: Mapping[str, Any]) -> dict[str, Any]:
    if not params:  # the usual case; iterating an empty protobuf map still costs
        return {}
    return {key: _param_value(value) for key, value in params.items()}


def fill_parameters(target: Any, params: Mapping[str, Any]) -> None:
    """Write a parameter dict into a protobuf map of ``InferParameter``."""
    for key, value in params.items():
        slot = target[key]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, int):
            if value >= 1 << 63 or isinstance(value, _Uint64):
                slot.uint64_param = value
            else:
                slot.int64_param = value
        elif isinstance(value, float):
            slot.double_param = value
        elif value is not None:
            slot.string_param = str(value)


def _typed_contents(
    name: str, datatype: str, shape: tuple[int, ...], contents: Any
) -> np.ndarray[Any, Any]:
    count = element_count(shape)
    if datatype == "BYTES":
        items = list(contents.bytes_contents)
        if len(items) != count:
            raise BadInput(
                f"input {name!r}: shape {list(shape)} has {count} elements,"
                f" bytes_contents has {len(items)}"
            )
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    spec = _CONTENTS.get(datatype)
    if spec is None:
        raise BadInput(
            f"input {name!r}: {datatype} has no typed contents field; send it in raw_input_contents"
        )
    field_name, src = spec
    values = getattr(contents, field_name)
    if len(values) != count:
        raise BadInput(
            f"input {name!r}: shape {list(shape)} has {count} elements, {field_name}"
            f" has {len(values)}"
        )
    raw = np.fromiter(values, dtype=src, count=count)
    dtype = DATATYPES[datatype]
    if dtype != src and count:
        info = np.iinfo(dtype)
        if int(raw.min()) < info.min or int(raw.max()) > info.max:
            raise BadInput(f"input {name!r}: a value is out of range for {datatype}")
    return raw.astype(dtype, copy=False).reshape(shape)


def parse_grpc_request(req: Any) -> InferRequest:
    """A ``ModelInferRequest`` as an :class:`InferRequest`."""
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise BadInput(
            f"raw_input_contents has {len(raw)} entries for {len(req.inputs)} inputs;"
            " when used, it needs one per input, in order"
        )
    if not req.inputs:
        raise BadInput("the request has no inputs")
    inputs: list[InputTensor] = []
    for i, inp in enumerate(req.inputs):
        name = inp.name
        if not name:
            raise BadInput(f"inputs[{i}] needs a name")
        datatype = check_datatype(name, inp.datatype)
        shape = check_shape(name, list(inp.shape))
        if raw:
            if inp.HasField("contents"):
                raise BadInput(f"input {name!r} has both contents and raw_input_contents")
            array = decode_binary(name, datatype, shape, memoryview(raw[i]))
        else:
            array = _typed_contents(name, datatype, shape, inp.contents)
        inputs.append(InputTensor(name, datatype, shape, array))
    outputs = (
        [RequestedOutput(o.name, True, parameters_to_dict(o.parameters)) for o in req.outputs]
        if req.outputs
        else None
    )
    parameters = parameters_to_dict(req.parameters)
    # HTTP's reply-encoding switch: over gRPC every output is raw; the HTTP
    # parser consumes it, so it is not echoed here either.
    parameters.pop("binary_data_output", None)
    return InferRequest(inputs, req.id or None, parameters, outputs or None, True)


def build_grpc_response(reply: InferReply) -> Any:
    response = pb.ModelInferResponse(model_name=reply.model_name, model_version=reply.model_version)
    if reply.id:
        response.id = reply.id
    fill_parameters(response.parameters, reply.parameters)
    raw: list[bytes] = []
    for out in reply.outputs:
        response.outputs.add(name=out.name, datatype=out.datatype, shape=list(out.array.shape))
        if out.datatype == "BYTES":
            raw.append(encode_bytes(out.array))
        else:
            raw.append(np.ascontiguousarray(out.array).tobytes())
    response.raw_output_contents.extend(raw)
    return response


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (context.invocation_metadata() or ())}


def _peer_host(peer: str) -> str:
    """``"ipv4:127.0.0.1:5000"`` -> ``"127.0.0.1"`` (limits count per address)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer


async def _abort(context: grpc.aio.ServicerContext, exc: ClipperError) -> None:
    code = getattr(grpc.StatusCode, exc.grpc_code, grpc.StatusCode.INTERNAL)
    await context.abort(code, str(exc) or exc.kind)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The RPCs, over an :class:`InferenceService`."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self.gate = service.gate

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.service.server_ready())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ModelReadyResponse(
            ready=self.service.model_ready(request.name, request.version or None)
        )

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = self.service.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            meta = await self.service.model_metadata(
                request.name, request.version or None, _metadata(context)
            )
        except ClipperError as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from None
        response = pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"]
        )
        for spec in meta["inputs"]:
            response.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        for spec in meta["outputs"]:
            response.outputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        return response

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        headers = _metadata(context)
        gate = self.gate
        try:
            client = gate.admit(headers, _peer_host(context.peer() or ""))
        except ClipperError as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from None
        try:
            service = self.service
            target = service.resolve(request.model_name, request.model_version or None)
            service.check_access(target, headers)
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            parsed = parse_grpc_request(request)
            reply = await service.infer(target, parsed, deadline=deadline)
            return build_grpc_response(reply)
        except ClipperError as exc:
            await _abort(context, exc)
            raise AssertionError("unreachable") from None
        finally:
            gate.release(client)


def h2_handlers(servicer: InferenceServicer) -> dict[str, UnaryHandler]:
    """The servicer's RPCs by gRPC path, for :class:`H2GrpcServer`."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    return {
        f"/{service.full_name}/{m.name}": unary_handler(
            getattr(servicer, m.name), getattr(pb, m.input_type.name)
        )
        for m in service.methods
    }


def read_tls_files(cert: str | None, key: str | None) -> tuple[bytes, bytes] | None:
    """The PEM certificate and key for the gRPC port, or None without TLS."""
    if not (cert and key):
        return None
    return Path(cert).read_bytes(), Path(key).read_bytes()


_NO_LIMIT = (1 << 31) - 2  # the core takes no more (its own "none" is one more)


class GrpcInferenceServer:
    """The OIP gRPC service on the running loop.

    Args:
        service: What the RPCs call.
        host: Address to bind.
        port: Port to bind; 0 picks a free one (see :attr:`port` after ``start``).
        tls: ``(certificate PEM, key PEM)`` to serve TLS, or None.
        max_message_bytes: Largest request accepted (replies may be 4x that).
        transport: ``"h2"`` (this package's HTTP/2; cleartext only), ``"aio"``
            (``grpc.aio``) or ``"auto"``: h2 without TLS, aio with it.
        reuse_port: Share the port with other processes of this user that bind
            it so (query workers); off, a second server cannot bind it.
        max_connections: Client connections open at once (0: no limit).  With
            aio, gRPC's own cap (``grpc.max_allowed_incoming_connections``):
            it counts the connections of every ``grpc.aio`` server of the
            process (they share gRPC's default resource quota), and the last
            server started sets it.
        body_budget: With h2: the budget for request bytes held at once, over
            all connections (the HTTP query port's, shared); None: none.  aio
            has no hook before its core has read a message: there, a request is
            bounded by ``max_message_bytes`` and a connection by its streams.
    """

    def __init__(
        self,
        service: InferenceService,
        *,
        host: str = "127.0.0.1",
        port: int = 8001,
        tls: tuple[bytes, bytes] | None = None,
        max_message_bytes: int = 10 * 1024 * 1024,
        transport: str = "auto",
        reuse_port: bool = False,
        max_connections: int = 0,
        body_budget: BodyBudget | None = None,
    ) -> None:
        if transport not in ("auto", "h2", "aio"):
            raise ValueError(f"unknown gRPC transport {transport!r}")
        if transport == "h2" and tls is not None:
            raise ValueError("the h2 transport serves cleartext only; use aio for TLS")
        self.transport = ("aio" if tls is not None else "h2") if transport == "auto" else transport
        self.service = service
        self.host = host
        self._requested_port = port
        self._tls = tls
        self._max_message = max_message_bytes
        self._reuse_port = reuse_port
        self._max_connections = max_connections
        self._body_budget = body_budget
        self._server: Any = None  # grpc.aio.Server or H2GrpcServer
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the gRPC server is not started")
        return self._port

    @property
    def bound_port(self) -> int | None:
        """The port once ``start`` has bound it, else None."""
        return self._port

    async def start(self) -> None:
        if self.transport == "h2":
            h2 = H2GrpcServer(
                h2_handlers(InferenceServicer(self.service)),
                host=self.host,
                port=self._requested_port,
                max_message_bytes=self._max_message,
                reuse_port=self._reuse_port,
                max_connections=self._max_connections,
                body_budget=self._body_budget,
            )
            await h2.start()
            self._server = h2
            self._port = h2.port
            return
        cap = self._max_connections
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self._max_message),
                ("grpc.max_send_message_length", max(4 * self._max_message, 64 << 20)),
                # On, the kernel spreads connections over every server bound
                # to the port: wanted for query workers only, or a second
                # server would silently share it.
                ("grpc.so_reuseport", int(self._reuse_port)),
                # The h2 transport's bounds, as far as grpc.aio has them (the
                # core's default: streams without limit, connections too).
                ("grpc.max_concurrent_streams", H2Limits().max_streams),
                # Always set: the core keeps the last value for every server.
                ("grpc.max_allowed_incoming_connections", min(cap or _NO_LIMIT, _NO_LIMIT)),
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            InferenceServicer(self.service), server
        )
        host = self.host
        bind = (
            f"[{host}]:{self._requested_port}"
            if ":" in host and not host.startswith("[")
            else f"{host}:{self._requested_port}"
        )
        try:
            if self._tls is not None:
                creds = grpc.ssl_server_credentials([(self._tls[1], self._tls[0])])
                port = server.add_secure_port(bind, creds)
            else:
                port = server.add_insecure_port(bind)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {bind}: {exc}") from None
        if port == 0:
            raise OSError(f"cannot listen for gRPC on {bind}")
        await server.start()
        self._server = server
        self._port = port

    async def stop(self, grace: float = 1.0) -> None:
        """Stop accepting; calls in flight get ``grace`` seconds."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)
