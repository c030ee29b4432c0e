"""The frontend's gRPC client of one model container replica (``grpc.aio``).

One ``ReplicaClient`` per replica: it owns one channel, encodes a batch into one
``Predict`` call (raw bytes + offsets, see ``protos/container.proto``), decodes
the outputs, and maps gRPC failures onto the ``clipper_core.errors`` tree:

=====================  ==========================================
gRPC status            raised
=====================  ==========================================
INTERNAL, UNKNOWN      ``ModelError(details)`` (the model raised, or
                       returned the wrong number of outputs)
INVALID_ARGUMENT       ``BadInput``
DEADLINE_EXCEEDED      ``DeadlineExceeded``
anything else          ``ReplicaUnavailable`` (crashed, stopping,
                       unreachable, still loading)
=====================  ==========================================

Predict goes over the container's local socket when it has one on this host
(``clipper_core.local_channel``): the same messages and statuses, a tenth of
gRPC's round trip.  Health checks and metadata always use gRPC.

Before Predict goes over a new connection, and when a lost replica answers
again, the client checks with ``Metadata`` that the container serves its model
version (``clipper_core.replica_metadata``).

The batch wire format is in ``clipper_core.replica_codec``.  How the data plane
gets a client for a replica is a :class:`ReplicaConnector`: today's local replicas
use :func:`insecure_connector`; remote ones can use TLS ``credentials`` and a
per-model token in ``call_metadata``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from typing import Any, Protocol

import grpc

from clipper_core import local_channel
from clipper_core.errors import ClipperError, DeadlineExceeded, ModelError, ReplicaUnavailable
from clipper_core.replica_codec import INPUT_TYPES, decode_outputs, encode_batch, status_error
from clipper_core.replica_metadata import ExpectedModel, metadata_dict
from model_containers import hop_trace
from model_containers._proto import container_pb2 as pb
from model_containers._proto import health_pb2

__all__ = [
    "DEFAULT_CHANNEL_OPTIONS",
    "INPUT_TYPES",
    "ReplicaClient",
    "ReplicaConnector",
    "decode_outputs",
    "encode_batch",
    "insecure_connector",
]

log = logging.getLogger(__name__)

_SERVICE = "clipper.container.v1.ModelContainer"
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
_READY = grpc.ChannelConnectivity.READY

#: Channel options.  Keepalive pings stay off (gRPC's default): replicas are
#: health-checked by the frontend, and pings to an idle container are wasted.
#: Reconnection backoff is short because a restarted local replica comes back
#: within a second or two.
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
)


class ReplicaClient:
    """A connection to one model container.

    The channel is created on first use, inside the running event loop; use a
    client from that one loop only.  Calls may overlap: each is one RPC on the
    shared channel.

    Args:
        address: ``host:port`` of the container.
        model_name: The model the container must serve (checked against its
            ``Metadata``); empty: any (a client that only probes a container).
        model_version: The version it must serve.
        replica_id: For error messages.
        channel_options: gRPC channel options; ``DEFAULT_CHANNEL_OPTIONS`` by default.
        local: Send Predict over the container's local socket when it has one
            that this host can reach (checked by ``wait_ready`` and after the
            socket is lost).
        credentials: Open a TLS channel with these (``grpc.ssl_channel_credentials``);
            None: a plaintext channel.
        call_metadata: ``(key, value)`` pairs sent with every gRPC call, e.g. a
            bearer token (keys lowercase).  The local socket does not carry them:
            it is authenticated by the instance token that ``Metadata`` returns.
        reply_spin: Seconds the event loop polls for a local-socket answer
            instead of sleeping (``local_channel``); None: 250 µs where this
            process may run on two CPUs or more, else 0.0 (never).
    """

    def __init__(
        self,
        address: str,
        *,
        model_name: str = "",
        model_version: str = "",
        replica_id: str = "",
        channel_options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
        local: bool = True,
        credentials: grpc.ChannelCredentials | None = None,
        call_metadata: Sequence[tuple[str, str]] = (),
        reply_spin: float | None = None,
    ) -> None:
        self.address = address
        self.model_name = model_name
        self.model_version = model_version
        self.replica_id = replica_id
        self._options = list(channel_options)
        self._credentials = credentials
        # None, not (), when empty: the calls then look exactly as without metadata.
        self._call_metadata: tuple[tuple[str, str], ...] | None = tuple(call_metadata) or None
        self._channel: Any = None  # grpc.aio.Channel | None
        self._predict: Any = None  # grpc.aio.UnaryUnaryMultiCallable
        self._metadata: Any = None
        self._health: Any = None
        self._batch_id = 0
        #: Seconds the container's model call took for the last successful
        #: ``predict`` (``PredictResponse.model_seconds``; 0.0 if not reported).
        self.last_model_seconds = 0.0
        self._closed = False
        self._use_local = local and os.name == "posix"
        #: Seconds the event loop polls for a local-socket answer before sleeping
        #: (``local_channel``); None at construction: the host's default.
        self.reply_spin = local_channel.reply_spin_for_host() if reply_spin is None else reply_spin
        self._local: local_channel.LocalChannel | None = None
        # Whether to ask the container (Metadata) for its local socket before the
        # next Predict: at first, and again after the socket was lost.
        self._resolve_local = self._use_local
        self._expected = ExpectedModel(model_name, model_version)

    def __repr__(self) -> str:
        return f"ReplicaClient({self._describe()})"

    def _describe(self) -> str:
        who = f"{self.model_name}:{self.model_version}" if self.model_name else "replica"
        if self.replica_id:
            who += f" replica {self.replica_id}"
        return f"{who} at {self.address}"

    def _ensure_channel(self) -> None:
        if self._closed:
            raise ReplicaUnavailable(f"{self._describe()}: client is closed")
        if self._channel is not None:
            return
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(self.address, options=self._options)
        else:
            channel = grpc.aio.secure_channel(
                self.address, self._credentials, options=self._options
            )
        self._predict = channel.unary_unary(
            f"/{_SERVICE}/Predict",
            request_serializer=pb.PredictRequest.SerializeToString,
            response_deserializer=pb.PredictResponse.FromString,
        )
        self._metadata = channel.unary_unary(
            f"/{_SERVICE}/Metadata",
            request_serializer=pb.MetadataRequest.SerializeToString,
            response_deserializer=pb.ModelMetadata.FromString,
        )
        self._health = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        self._channel = channel

    @property
    def transport(self) -> str:
        """``"local"`` when Predict goes over the local socket, else ``"grpc"``."""
        return "local" if self._local is not None and not self._local.closed else "grpc"

    def _error(self, exc: grpc.aio.AioRpcError, what: str) -> ClipperError:
        return self._status_error(exc.code(), exc.details() or "", what)

    def _status_error(self, code: grpc.StatusCode, details: str, what: str) -> ClipperError:
        return status_error(code, details, f"{self._describe()}: {what}")

    async def predict(
        self,
        inputs: Sequence[Any],
        input_type: str,
        timeout: float | None = None,  # noqa: ASYNC109 (it is the RPC's deadline, sent to the server)
    ) -> list[Any]:
        """Predict one batch with one RPC.

        Args:
            inputs: The batch (see ``encode_batch``).
            input_type: The model's input type.
            timeout: Seconds until the RPC's deadline; ``None`` for no deadline.

        Returns:
            One output per input: JSON-decoded objects, numpy arrays (TENSOR
            encoding) or bytes.

        Raises:
            ModelError: The model raised (the message is the exception's last
                traceback line) or returned the wrong number of outputs, or the
                container's response does not decode.
            BadInput: The inputs do not fit ``input_type``, or the container
                refused them.
            DeadlineExceeded: ``timeout`` passed.
            ReplicaUnavailable: The replica cannot be reached or is not serving.
        """
        data, offsets = encode_batch(inputs, input_type)
        self._ensure_channel()
        self._batch_id += 1
        request = pb.PredictRequest(
            batch_id=self._batch_id,
            input_type=INPUT_TYPES[input_type],  # type: ignore[arg-type]
            data=data,
            offsets=offsets,
        )
        response = await self._call_predict(request, timeout, len(inputs) == 1)
        try:
            outputs = decode_outputs(response)
        except Exception as exc:  # a broken container, as a response that does not parse
            raise ModelError(f"{self._describe()} sent a bad PredictResponse: {exc}") from None
        self.last_model_seconds = response.model_seconds
        if len(outputs) != len(inputs):
            raise ModelError(
                f"{self._describe()} returned {len(outputs)} outputs for {len(inputs)} inputs"
            )
        return outputs

    async def predict_tensors(
        self,
        tensors: Sequence[pb.Tensor],
        input_type: str,
        parameters: bytes = b"",
        timeout: float | None = None,  # noqa: ASYNC109 (the RPC's deadline)
    ) -> list[pb.Tensor]:
        """Predict one tensor batch (``PredictRequest.tensors``) with one RPC.

        Args:
            tensors: The named input tensors, all with the batch's N rows.
            input_type: The model's input type (sent along for the container's check).
            parameters: The requests' parameters, a JSON object (``b""``: none).
            timeout: Seconds until the RPC's deadline; ``None`` for no deadline.

        Returns:
            The output tensors as the container sent them.

        Raises:
            ModelError, BadInput, DeadlineExceeded, ReplicaUnavailable: as ``predict``;
            ``ModelError`` also when the container answers no output tensor (a
            container that predates tensor batches).
        """
        self._ensure_channel()
        self._batch_id += 1
        request = pb.PredictRequest(
            batch_id=self._batch_id,
            input_type=INPUT_TYPES[input_type],  # type: ignore[arg-type]
            tensors=tensors,
            parameters=parameters,
        )
        one_row = bool(tensors) and tensors[0].shape[:1] == [1]
        response = await self._call_predict(request, timeout, one_row)
        if not response.tensors:
            raise ModelError(
                f"{self._describe()} answered a tensor batch with no output tensor"
                " (does the container predate tensor batches?)"
            )
        self.last_model_seconds = response.model_seconds
        outputs: list[pb.Tensor] = response.tensors[:]  # a slice is faster than list()
        return outputs

    async def _call_predict(
        self,
        request: pb.PredictRequest,
        timeout: float | None,  # noqa: ASYNC109 (the call's deadline)
        poll: bool = False,
    ) -> pb.PredictResponse:
        # poll: a batch of one input, as at light load, whose answer is awaited by
        # polling (``reply_spin``); a bigger batch leaves the loop other work.
        if self._local is not None and self._local.closed:
            self._lost_local()  # the container went away: ask again which socket
        if self._resolve_local:
            await self._connect_local()
        channel = self._local
        if channel is not None:
            return await self._call_local(channel, request, timeout, poll)
        self._note_channel_state()
        if not self._expected.checked:
            await self._expected.ensure(self.check_model)
        try:
            return await self._predict(  # type: ignore[no-any-return]
                request, timeout=timeout, metadata=self._call_metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, "predict") from None
        except grpc.aio.UsageError as exc:  # the channel was closed under us
            raise ReplicaUnavailable(f"{self._describe()}: {exc}") from None

    async def _call_local(
        self,
        channel: local_channel.LocalChannel,
        request: pb.PredictRequest,
        timeout: float | None,  # noqa: ASYNC109
        poll: bool,
    ) -> pb.PredictResponse:
        payload = request.SerializeToString()
        if hop_trace.ENABLED:
            hop_trace.mark("batch_encoded")
        if len(payload) > _MAX_MESSAGE_BYTES:
            raise self._status_error(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(payload)} bytes exceeds the limit of {_MAX_MESSAGE_BYTES}",
                "predict",
            )
        try:
            kind, body = await channel.request(
                local_channel.KIND_PREDICT, payload, timeout, poll=poll
            )
        except ConnectionError as exc:
            self._lost_local()
            raise ReplicaUnavailable(f"{self._describe()}: predict failed: {exc}") from None
        except TimeoutError:
            raise DeadlineExceeded(f"{self._describe()}: predict missed its deadline") from None
        if kind != local_channel.KIND_OK:
            code = _STATUS_CODES.get(kind, grpc.StatusCode.UNKNOWN)
            raise self._status_error(code, body.decode("utf-8", "replace"), "predict")
        try:
            response: pb.PredictResponse = pb.PredictResponse.FromString(body)
        except Exception as exc:  # a broken container: not this batch's fault alone
            raise ModelError(f"{self._describe()} sent a bad PredictResponse: {exc}") from None
        return response

    async def _connect_local(self, meta: dict[str, Any] | None = None) -> None:
        """Ask the container for its local socket (``meta``: its checked metadata)
        and connect; gRPC if it has none, or if it cannot be reached from here
        (another host).  Raises as :meth:`check_model`."""
        meta = meta or await self.check_model()
        self._resolve_local = False
        path, token = meta["local_socket"], meta["instance_token"]
        if not path or not token:
            return
        try:
            channel = await local_channel.LocalChannel.connect(
                path, token, timeout=2.0, reply_spin=self.reply_spin
            )
        except (OSError, TimeoutError) as exc:
            log.info("%s: Predict stays on gRPC (local socket: %s)", self._describe(), exc)
            return
        if self._local is not None or self._closed:  # a concurrent call won, or close()
            channel.close()
            return
        self._local = channel

    def _note_channel_state(self) -> None:
        # Not READY: its next connection may reach another process at the address.
        if self._expected.checked and self._channel.get_state() is not _READY:
            self._expected.checked = False

    async def check_model(self, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The container's :meth:`metadata`, once it names this client's model version.

        Raises:
            ReplicaUnavailable: It serves another one, or did not answer.
        """
        try:
            meta = await self.metadata(timeout)
        except ClipperError as exc:  # no answer proves nothing, nor is it a batch's fault
            if isinstance(exc, ReplicaUnavailable):
                raise
            raise ReplicaUnavailable(f"{self._describe()}: no model check: {exc}") from None
        self._expected.verify(meta, self._describe())
        return meta

    async def serving(self, timeout: float = 2.0) -> bool:  # noqa: ASYNC109
        """True when the container reports SERVING and serves this client's model
        version (:meth:`check_model`); False otherwise or on any error."""
        try:
            return await self.health(timeout) and bool(await self.check_model(timeout))
        except ClipperError:
            return False

    def _lost_local(self) -> None:
        if self._local is not None:
            self._local.close()
            self._local = None
        self._resolve_local = self._use_local and not self._closed

    async def metadata(self, timeout: float | None = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The container's ModelMetadata as a dict.

        Keys: ``name``, ``version``, ``input_type`` (e.g. ``"doubles"``),
        ``output_type``, ``platform``, ``replica_id``, ``pid``, ``inputs`` and
        ``outputs`` (lists of ``{"name", "datatype", "shape"}``).
        """
        self._ensure_channel()
        self._note_channel_state()
        try:
            meta = await self._metadata(
                pb.MetadataRequest(), timeout=timeout, metadata=self._call_metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise self._error(exc, "metadata") from None
        except grpc.aio.UsageError as exc:
            raise ReplicaUnavailable(f"{self._describe()}: {exc}") from None
        return metadata_dict(meta)

    async def health(self, timeout: float | None = 2.0) -> bool:  # noqa: ASYNC109
        """True when the container reports SERVING; False otherwise or on any error."""
        self._ensure_channel()
        self._note_channel_state()
        try:
            reply = await self._health(
                health_pb2.HealthCheckRequest(service=_SERVICE),
                timeout=timeout,
                metadata=self._call_metadata,
            )
        except (grpc.aio.AioRpcError, grpc.aio.UsageError):
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def wait_ready(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until the channel is connected and the container reports SERVING
        and serves this client's model (:meth:`check_model`).

        Raises:
            ReplicaUnavailable: Not ready within ``timeout`` seconds, or the
                container serves another model version.
        """
        self._ensure_channel()
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError:
            raise ReplicaUnavailable(
                f"{self._describe()}: no connection within {timeout:g} s"
            ) from None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if await self.health(timeout=max(min(remaining, 2.0), 0.01)):
                meta = await self.check_model(max(deadline - time.monotonic(), 1.0))
                if self._resolve_local:
                    await self._connect_local(meta)
                return
            await asyncio.sleep(min(0.05, max(deadline - time.monotonic(), 0)))
        raise ReplicaUnavailable(f"{self._describe()}: not SERVING within {timeout:g} s")

    async def close(self) -> None:
        """Close the channel; RPCs in flight are cancelled.  Idempotent."""
        self._closed = True
        self._resolve_local = False
        if self._local is not None:
            self._local.close()
            self._local = None
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    async def __aenter__(self) -> ReplicaClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class ReplicaConnector(Protocol):
    """Makes the client that the data plane uses to reach one replica.

    ``ModelVersion`` calls it for every replica it connects.  The connector is
    where transport security is decided: TLS credentials and a per-model token
    (``ReplicaClient(credentials=..., call_metadata=...)``) for a remote replica.
    """

    def __call__(self, address: str, model: str, version: str, replica_id: str) -> ReplicaClient:
        """A client, not yet connected, for replica ``replica_id`` of ``model:version``
        at ``address`` (``host:port``)."""
        ...


def insecure_connector(address: str, model: str, version: str, replica_id: str) -> ReplicaClient:
    """The default :class:`ReplicaConnector`: a plaintext gRPC channel, with Predict
    over the container's local socket when it is on this host."""
    return ReplicaClient(address, model_name=model, model_version=version, replica_id=replica_id)
