"""The gRPC server of a model container: ModelContainer + grpc.health.v1.Health."""

from __future__ import annotations

import inspect
import json
import logging
import os
import secrets
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import grpc

from model_containers import codec, hop_trace, tensors
from model_containers._proto import container_pb2 as pb
from model_containers._proto import container_pb2_grpc as pb_grpc
from model_containers.failures import PredictFailure
from model_containers.health import NOT_SERVING, SERVING, HealthServicer
from model_containers.local_socket import LocalSocketServer
from model_containers.model import Model, TensorSpec

log = logging.getLogger("model_containers")

#: The service name under which the container reports its health (besides "").
SERVICE_NAME = "clipper.container.v1.ModelContainer"

INPUT_TYPE_ENUM: dict[str, int] = {
    "ints": pb.INTS,
    "floats": pb.FLOATS,
    "doubles": pb.DOUBLES,
    "strings": pb.STRINGS,
    "bytes": pb.BYTES,
}

# gRPC sends status details in trailers, which receivers cap (8 KiB by default);
# a huge exception message must not turn a model error into a transport error.
_MAX_DETAILS = 2000


def exception_line(exc: BaseException) -> str:
    """The last line of the exception's traceback: ``"ValueError: bad feature count"``.

    Notes attached with ``add_note`` (printed after that line) are left out.
    """
    lines = traceback.format_exception_only(type(exc), exc)
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list | tuple) and 0 < len(notes) < len(lines):
        lines = lines[: -len(notes)]
    text = lines[-1].strip() if lines else type(exc).__name__
    return text if len(text) <= _MAX_DETAILS else text[: _MAX_DETAILS - 3] + "..."


@dataclass(frozen=True)
class ContainerInfo:
    """What the container serves; reported by the Metadata RPC and on registration."""

    model_name: str
    model_version: str
    input_type: str
    replica_id: str = ""


class ModelContainerServicer(pb_grpc.ModelContainerServicer):
    """Predict and Metadata over one model.

    ``Predict`` runs in gRPC's worker threads; ``max_concurrency`` model calls may
    overlap (1 by default: most models are not thread-safe).  The worker pool is
    larger than that, so that health checks and metadata are answered while a long
    batch runs.
    """

    def __init__(self, info: ContainerInfo, *, max_concurrency: int = 1) -> None:
        if info.input_type not in INPUT_TYPE_ENUM:
            raise ValueError(f"unknown input type {info.input_type!r}")
        self.info = info
        self._input_enum = INPUT_TYPE_ENUM[info.input_type]
        self._model: Model | None = None
        self._takes_parameters = False
        # One model call at a time (the default) needs only a lock, which costs
        # a tenth of a semaphore (a Python Condition) per call.
        self._slots: AbstractContextManager[Any] = threading.Lock()
        if max_concurrency != 1:
            self._slots = threading.BoundedSemaphore(max_concurrency)
        #: The local socket's path once one listens (ModelMetadata.local_socket).
        self.local_socket = ""
        #: Repeated as the local socket's first frame (ModelMetadata.instance_token).
        self.instance_token = secrets.token_hex(16)

    def set_model(self, model: Model) -> None:
        """Start serving ``model`` (already loaded)."""
        if getattr(model, "input_type", None) is None:
            # A closure's input type comes from the command line; the default
            # predict_tensors reads it from the model.
            model.input_type = self.info.input_type  # type: ignore[misc]
        self._takes_parameters = takes_parameters(model)
        self._model = model

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> Any:
        try:
            return self.answer(request)
        except PredictFailure as failure:
            context.abort(failure.code, failure.details)  # raises
            raise AssertionError("unreachable") from None

    def answer(self, request: pb.PredictRequest) -> pb.PredictResponse:
        """One Predict, whatever the transport.

        Raises:
            PredictFailure: The status the call fails with (INTERNAL for a model
                error, INVALID_ARGUMENT, UNAVAILABLE while loading).
        """
        if request.tensors:
            outputs, seconds = self._predict_tensors(request)
            return pb.PredictResponse(
                batch_id=request.batch_id,
                tensors=outputs,
                model_seconds=seconds,
            )
        encoded, seconds = self._predict(request)
        return pb.PredictResponse(
            batch_id=request.batch_id,
            encoding=encoded.encoding,  # type: ignore[arg-type]
            data=encoded.data,
            offsets=encoded.offsets,
            dtype=encoded.dtype,
            shape=encoded.shape,
            model_seconds=seconds,
        )

    def _predict(self, request: pb.PredictRequest) -> tuple[codec.EncodedOutputs, float]:
        """Decode, ``model.predict``, encode; and the model call's seconds."""
        model = self._model
        if model is None:
            raise PredictFailure(grpc.StatusCode.UNAVAILABLE, "the model is still loading")
        if request.input_type != self._input_enum:
            raise PredictFailure(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"this container serves {self.info.input_type} inputs, got "
                f"{pb.InputType.Name(request.input_type)}",
            )
        try:
            inputs = codec.decode_inputs(self.info.input_type, request.data, request.offsets)
        except codec.DecodeError as exc:
            raise PredictFailure(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        n = len(inputs)
        if n == 0:
            return codec.encode_outputs([], 0), 0.0
        if hop_trace.ENABLED:
            hop_trace.mark("model_started")
        with self._slots:
            try:
                started = time.perf_counter()
                outputs = model.predict(inputs)
                seconds = time.perf_counter() - started
                if hop_trace.ENABLED:
                    hop_trace.mark("model_done")
            except (Exception, SystemExit) as exc:
                # SystemExit too: sys.exit() in predict is the model's error, and
                # escaping the worker thread it went unanswered (gRPC) or closed
                # the local socket as if the process had crashed.
                log.error(
                    "batch %d (%d inputs) failed:\n%s",
                    request.batch_id,
                    n,
                    "".join(traceback.format_exception(exc)),
                )
                raise PredictFailure(grpc.StatusCode.INTERNAL, exception_line(exc)) from None
        try:
            return codec.encode_outputs(outputs, n), seconds
        except codec.OutputError as exc:
            log.error("batch %d: %s", request.batch_id, exc)
            raise PredictFailure(grpc.StatusCode.INTERNAL, str(exc)) from None

    def _predict_tensors(self, request: pb.PredictRequest) -> tuple[list[pb.Tensor], float]:
        """A tensor batch: decode, ``model.predict_tensors``, encode (see container.proto)."""
        model = self._model
        if model is None:
            raise PredictFailure(grpc.StatusCode.UNAVAILABLE, "the model is still loading")
        inputs: dict[str, Any] = {}
        n = -1
        try:
            for t in request.tensors[:]:  # a slice iterates faster than the field
                if t.name in inputs:
                    raise tensors.TensorInputError(f"input {t.name!r} appears twice")
                arr = tensors.decode_tensor(t.datatype, t.shape, t.data)
                if arr.ndim == 0 or (n >= 0 and arr.shape[0] != n):
                    raise tensors.TensorInputError(
                        f"input {t.name!r} of shape {list(arr.shape)} does not share the"
                        f" batch dimension {n}"
                    )
                n = arr.shape[0]
                inputs[t.name] = arr
            params = json.loads(request.parameters) if request.parameters else {}
            if not isinstance(params, dict):
                raise tensors.TensorInputError("the request parameters are not a JSON object")
        except (tensors.TensorInputError, ValueError) as exc:
            raise PredictFailure(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if hop_trace.ENABLED:
            hop_trace.mark("model_started")
        with self._slots:
            try:
                started = time.perf_counter()
                if self._takes_parameters:
                    outputs = model.predict_tensors(inputs, parameters=params)  # type: ignore[call-arg]
                else:
                    outputs = model.predict_tensors(inputs)
                seconds = time.perf_counter() - started
                if hop_trace.ENABLED:
                    hop_trace.mark("model_done")
            except tensors.TensorInputError as exc:
                raise PredictFailure(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
            except (Exception, SystemExit) as exc:  # SystemExit: as in _predict
                log.error(
                    "tensor batch %d (%d rows) failed:\n%s",
                    request.batch_id,
                    n,
                    "".join(traceback.format_exception(exc)),
                )
                raise PredictFailure(grpc.StatusCode.INTERNAL, exception_line(exc)) from None
        if not isinstance(outputs, Mapping) or not outputs:
            raise PredictFailure(
                grpc.StatusCode.INTERNAL,
                f"predict_tensors returned {type(outputs).__name__}; expected a dict of"
                " output name to array",
            )
        declared = {spec.name: spec.datatype for spec in getattr(model, "outputs", ())}
        encoded: list[pb.Tensor] = []
        for name, value in outputs.items():
            try:
                datatype, shape, data = tensors.encode_tensor(value, declared.get(name))
            except (ValueError, TypeError) as exc:
                raise PredictFailure(grpc.StatusCode.INTERNAL, f"output {name!r}: {exc}") from None
            if not shape or shape[0] != n:
                raise PredictFailure(
                    grpc.StatusCode.INTERNAL,
                    f"output {name!r} has shape {shape}; its first dimension must be the"
                    f" batch's {n} rows",
                )
            encoded.append(pb.Tensor(name=str(name), datatype=datatype, shape=shape, data=data))
        return encoded, seconds

    def Metadata(self, request: pb.MetadataRequest, context: grpc.ServicerContext) -> Any:
        model = self._model
        specs_in = getattr(model, "inputs", ()) if model is not None else ()
        specs_out = getattr(model, "outputs", ()) if model is not None else ()
        if not specs_in:
            specs_in = tensors.default_input_specs(self.info.input_type)
        if not specs_out:
            specs_out = tensors.default_output_specs()
        return pb.ModelMetadata(
            name=self.info.model_name,
            version=self.info.model_version,
            input_type=self._input_enum,  # type: ignore[arg-type]
            output_type=str(getattr(model, "output_type", "") or ""),
            platform=str(getattr(model, "platform", "") or ""),
            replica_id=self.info.replica_id,
            pid=os.getpid(),
            inputs=[_tensor_spec(s) for s in specs_in],
            outputs=[_tensor_spec(s) for s in specs_out],
            local_socket=self.local_socket,
            instance_token=self.instance_token,
        )


def _tensor_spec(spec: TensorSpec) -> pb.TensorSpec:
    return pb.TensorSpec(name=spec.name, datatype=spec.datatype, shape=spec.shape)


class ContainerServer:
    """The container's gRPC server: model service, health service, thread pool.

    Health reports NOT_SERVING until ``serve(model)`` and again from ``stop()``.
    ``credentials`` makes the port TLS only; ``interceptors`` see every call
    (see :mod:`model_containers.grpc_auth`).  ``health_port`` also answers the
    health service alone, in plaintext and to anyone, on that port: what a
    Kubernetes gRPC probe can reach when the model's port needs TLS and a token.
    ``instance_token`` is the local socket's token (default: a random one).
    """

    def __init__(
        self,
        info: ContainerInfo,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_workers: int = 1,
        max_message_bytes: int = 64 * 1024 * 1024,
        local_socket: str | None = "auto",
        credentials: grpc.ServerCredentials | None = None,
        interceptors: Sequence[grpc.ServerInterceptor] = (),
        health_port: int | None = None,
        instance_token: str | None = None,
    ) -> None:
        self.servicer = ModelContainerServicer(info, max_concurrency=max_workers)
        if instance_token is not None:  # else the servicer's own random one
            self.servicer.instance_token = instance_token
        self._max_message_bytes = max_message_bytes
        self._local_path = local_socket
        # Non-blocking Watch streams: they must not each hold a worker thread.
        self._health_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="container-health")
        self.health = HealthServicer(thread_pool=self._health_pool)
        for service in ("", SERVICE_NAME):
            self.health.set_status(service, NOT_SERVING)
        # Model calls are capped by the servicer's semaphore; the extra threads
        # answer health checks and metadata while a batch runs.
        self._executor = ThreadPoolExecutor(
            max_workers=max_workers + 4, thread_name_prefix="container-rpc"
        )
        self._server = grpc.server(
            self._executor,
            interceptors=list(interceptors),
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_ModelContainerServicer_to_server(self.servicer, self._server)  # type: ignore[no-untyped-call]
        self.health.add_to_server(self._server)
        bind = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        try:
            if credentials is None:
                self.port = self._server.add_insecure_port(bind)
            else:
                self.port = self._server.add_secure_port(bind, credentials)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {bind}: {exc}") from None
        if self.port == 0:
            raise OSError(f"cannot listen on {bind}")
        self.host = host
        self._local: LocalSocketServer | None = None  # made by start()
        self._health_server: grpc.Server | None = None
        #: The plaintext health-only port, when one was asked for.
        self.health_port: int | None = None
        if health_port is not None:
            self._health_server = grpc.server(
                ThreadPoolExecutor(max_workers=2, thread_name_prefix="container-probe"),
                # A port another process listens on is an error, not a shared port.
                options=[("grpc.so_reuseport", 0)],
            )
            self.health.add_to_server(self._health_server)
            at = bind.rpartition(":")[0] + f":{health_port}"
            try:
                self.health_port = self._health_server.add_insecure_port(at)
            except RuntimeError as exc:
                raise OSError(f"cannot listen on {at}: {exc}") from None
            if self.health_port == 0:
                raise OSError(f"cannot listen on {at}")

    @property
    def address(self) -> str:
        """``host:port`` as bound (IPv6 hosts in brackets)."""
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.port}"

    def start(self) -> None:
        """Start the gRPC server, and the local socket unless it is off.

        Raises:
            OSError: The local socket cannot listen at the given path.
        """
        if self._local_path is not None and os.name == "posix":
            path = None if self._local_path == "auto" else self._local_path
            self._local = LocalSocketServer(
                self.servicer, path, max_message_bytes=self._max_message_bytes
            )
            self._local.start()
        self._server.start()
        if self._health_server is not None:
            self._health_server.start()

    def serve(self, model: Model) -> None:
        """Start answering Predict with ``model`` and report SERVING."""
        self.servicer.set_model(model)
        for service in ("", SERVICE_NAME):
            self.health.set_status(service, SERVING)

    def stop(self, grace: float) -> None:
        """Report NOT_SERVING, then stop; calls in flight get ``grace`` seconds."""
        self.health.enter_graceful_shutdown()
        deadline = time.monotonic() + grace
        if self._local is not None:
            self._local.refuse()
        self._server.stop(grace).wait()
        if self._health_server is not None:
            self._health_server.stop(0).wait()
        if self._local is not None:
            self._local.stop(deadline - time.monotonic())
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._health_pool.shutdown(wait=False, cancel_futures=True)


def takes_parameters(model: Model) -> bool:
    """Whether ``model.predict_tensors`` takes the requests' ``parameters``."""
    try:
        signature = inspect.signature(model.predict_tensors)
    except (TypeError, ValueError):
        return False
    return "parameters" in signature.parameters
