"""What both Open Inference Protocol frontends (HTTP and gRPC) do.

``InferenceService`` resolves a name to a model version, describes it, validates a
request against its tensor specs, and sends the request through the same data
plane as Clipper's REST queries (cache, queue, admission control, adaptive
batching; see ``clipper_core.dataplane.tensor_batch``).

Names: a name is first looked up among the deployed models, then among the
applications.  A model answers with its current version (or the version in the
path); an application answers with its (first) linked model, within the
application's latency objective -- when that passes, the reply is the
application's default output in a tensor named ``output``, flagged with the
response parameters ``default: true`` and ``default_explanation``, as Clipper's
REST API does.  A pipeline walks its stages (``clipper_core.oip.pipeline``).
A model queried by its own name has no latency objective: its deadline is the
service's ``default_timeout`` (the server's ``batch_timeout``), or sooner with the
request parameter ``timeout`` (microseconds, as Triton's), a gRPC deadline, or the
``Clipper-Deadline-Ms`` header; past it the request fails with 504 /
DEADLINE_EXCEEDED.

Metadata (tensor specs, platform) comes from a replica of the version, once; it
is kept for the life of the version object.  Outputs a model did not declare are
corrected from its first answer (``clipper_core.oip.specs.learn_outputs``).  A
version without a live replica (and none restarting) is refused at once (503 /
UNAVAILABLE, naming it) rather than at its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from clipper_core._version import __version__
from clipper_core.dataplane import Application, ModelVersion
from clipper_core.dataplane.accounting import count_answered, record_failure
from clipper_core.dataplane.application import unanswerable
from clipper_core.dataplane.futures import wait_until
from clipper_core.dataplane.tensor_batch import TensorResult
from clipper_core.errors import (
    BadInput,
    ClipperError,
    DeadlineExceeded,
    NoLiveReplica,
    NotFound,
    ReplicaUnavailable,
)
from clipper_core.oip import pipeline
from clipper_core.oip.specs import build_query, learn_outputs, select_outputs
from clipper_core.oip.tensors import InferRequest, OutputTensor
from model_containers.tensors import datatype_of, outputs_to_tensor

if TYPE_CHECKING:
    from clipper_core.admission import QueryGate
    from clipper_core.dataplane import QueryView

log = logging.getLogger("clipper_core.oip")

__all__ = ["SERVER_NAME", "InferReply", "InferenceService", "Target"]

SERVER_NAME = "clipper_core"
#: The OIP extensions this server implements.
EXTENSIONS = ("binary_tensor_data", "parameters")

#: Seconds to wait for a replica's metadata.
METADATA_TIMEOUT = 5.0


@dataclass(slots=True)
class Target:
    """What a model name (and version) in a request resolves to."""

    name: str
    mv: ModelVersion | None
    app: Application | None
    versions: list[str]

    @property
    def version(self) -> str:
        return "" if self.mv is None else self.mv.version


@dataclass(slots=True)
class InferReply:
    """An inference reply, before it is encoded for HTTP or gRPC."""

    model_name: str
    model_version: str
    id: str | None
    parameters: dict[str, Any]
    outputs: list[OutputTensor]


class InferenceService:
    """Resolution, metadata, readiness and inference for the OIP frontends.

    Args:
        dataplane: What answers the requests.
        gate: The checks before any work (the transports admit the client; the
            service applies the API keys of what a name resolves to).
        default_timeout: Seconds a model queried by its own name may take (an
            application's objective applies to a query by the app's name).
        ready: Whether the server is ready (its state restored).
    """

    def __init__(
        self,
        dataplane: QueryView,
        gate: QueryGate,
        *,
        default_timeout: float,
        ready: Callable[[], bool],
    ) -> None:
        self.dataplane = dataplane
        self.gate = gate
        self.default_timeout = default_timeout
        self._ready = ready
        self._metadata: weakref.WeakKeyDictionary[ModelVersion, dict[str, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._fetching: weakref.WeakKeyDictionary[ModelVersion, asyncio.Task[dict[str, Any]]] = (
            weakref.WeakKeyDictionary()
        )

    # -- server -----------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def server_ready(self) -> bool:
        """Whether the server is ready: started, its state restored, not stopping."""
        return self._ready()

    # -- names ------------------------------------------------------------------

    def resolve(self, name: str, version: str | None) -> Target:
        """A model by that name first, else an application.

        Raises:
            NotFound: Neither exists, or the version does not.
        """
        version = version or None
        model = self.dataplane.models.get(name)
        if model is not None:
            mv = model.version_for(version)
            if mv is None:
                raise NotFound(f"model {name!r} has no current version")
            return Target(name, mv, None, sorted(model.versions))
        app = self.dataplane.apps.get(name)
        if app is None:
            raise NotFound(f"unknown model {name!r}: no model or application has that name")
        if not app.linked_models or pipeline.is_pipeline(app):
            return Target(name, None, app, [])
        linked = self.dataplane.models.get(app.linked_models[0])
        if linked is None:
            if version is not None:
                raise NotFound(f"application {name!r} has no version {version!r}")
            return Target(name, None, app, [])
        mv = linked.version_for(version)
        return Target(name, mv, app, sorted(linked.versions))

    def check_access(self, target: Target, headers: Mapping[str, str]) -> None:
        """Apply the API keys of the application(s) behind ``target``.

        A model reached by its own name is guarded by the keys of every
        application linked to it that requires one: any of their keys lets it
        through, so that OIP offers no way around an application's keys.
        """
        gate = self.gate
        if target.app is not None:
            gate.check(target.app.name, headers)
            return
        assert target.mv is not None
        if not gate.any_required():
            return  # no application has keys (the common case): nothing to walk
        guarded = [
            app.name
            for app in self.dataplane.apps.values()
            if target.mv.name in app.linked_models and gate.required(app.name)
        ]
        error: ClipperError | None = None
        for app_name in guarded:
            try:
                gate.check(app_name, headers)
                return
            except ClipperError as exc:
                error = exc
        if error is not None:
            raise error

    # -- metadata ---------------------------------------------------------------

    async def version_metadata(self, mv: ModelVersion, end: float | None = None) -> dict[str, Any]:
        """The container's metadata of ``mv``, fetched from a replica once.

        The fetch runs in a task of its own that every request waiting for it
        shares: one whose client leaves, or whose deadline ``end`` (a
        ``time.monotonic()`` time) passes first, stops waiting, not the fetch.

        Raises:
            ReplicaUnavailable: No replica answered.
            TimeoutError: ``end`` passed first.
        """
        meta = self._metadata.get(mv)
        if meta is not None:
            return meta
        fetch = self._fetching.get(mv)
        if fetch is None:
            fetch = asyncio.get_running_loop().create_task(self._fetch(mv))
            self._fetching[mv] = fetch
            fetch.add_done_callback(partial(self._fetched, mv))
        if end is None:
            return await asyncio.shield(fetch)
        return await asyncio.wait_for(asyncio.shield(fetch), max(end - time.monotonic(), 0.0))

    def _fetched(self, mv: ModelVersion, fetch: asyncio.Task[dict[str, Any]]) -> None:
        if self._fetching.get(mv) is fetch:
            del self._fetching[mv]
        if not fetch.cancelled() and fetch.exception() is None:  # retrieved either way
            self._metadata[mv] = fetch.result()

    async def _fetch(self, mv: ModelVersion) -> dict[str, Any]:
        if not mv.replicas:
            raise NoLiveReplica([mv.key])
        last: Exception | None = None
        for slot in list(mv.replicas.values()):
            try:
                return await slot.client.metadata(timeout=METADATA_TIMEOUT)
            except ClipperError as exc:
                last = exc
        detail = f": {last}" if last is not None else ""
        raise ReplicaUnavailable(f"model {mv.key} has no replica that answers{detail}")

    async def model_metadata(
        self, name: str, version: str | None, headers: Mapping[str, str]
    ) -> dict[str, Any]:
        """``GET /v2/models/{name}[/versions/{version}]``, behind the same API keys
        as an inference (the description names a keyed app's inputs and outputs)."""
        target = self.resolve(name, version)
        self.check_access(target, headers)
        if target.mv is None and pipeline.is_pipeline(target.app):
            return pipeline.metadata(target.app)
        if target.mv is None:
            raise NotFound(f"application {name!r} has no deployed model to describe")
        meta = await self.version_metadata(target.mv)
        return {
            "name": name,
            "versions": target.versions,
            "platform": meta.get("platform") or "clipper_core",
            "inputs": meta.get("inputs", []),
            "outputs": meta.get("outputs", []),
        }

    def model_ready(self, name: str, version: str | None) -> bool:
        """Whether the version has a replica that serves (False for unknown names)."""
        try:
            target = self.resolve(name, version)
        except NotFound:
            return False
        mv = target.mv
        if pipeline.is_pipeline(target.app):
            return pipeline.ready(self.dataplane, target.app)
        if mv is None or (target.app is not None and target.app.routes_queries):
            return False
        return any(s.up for s in mv.replicas.values())

    # -- inference --------------------------------------------------------------

    async def infer(
        self,
        target: Target,
        request: InferRequest,
        *,
        deadline: float | None = None,
    ) -> InferReply:
        """Answer one request through the data plane.

        Args:
            target: From :meth:`resolve`.
            request: The parsed request.
            deadline: A ``time.monotonic()`` deadline from the transport, if any.
        """
        now = time.monotonic()
        app = target.app
        walks = pipeline.is_pipeline(app)
        if app is not None and app.routes_queries and not walks:
            raise BadInput(policy_refusal(app))
        end = now + (app.slo if app is not None else self.default_timeout)
        timeout = request.timeout
        if timeout is not None:
            end = min(end, now + timeout)
        if deadline is not None:
            end = min(end, deadline)
        if walks:
            assert app is not None
            params, outputs = await pipeline.infer(self.dataplane, app, request, end)
            return InferReply(target.name, "", request.id, params, outputs)
        mv = target.mv
        rows = _rows_of(request)
        if mv is None:
            assert app is not None
            reason = (
                f"no model is linked to application {app.name!r}"
                if not app.linked_models
                else f"model {app.linked_models[0]!r} has no deployed version"
            )
            app.metrics.unanswered(rows, "no_model")
            return self._default_reply(target, request, rows, reason)
        try:
            # Known after a version's first request: no coroutine to wait for it.
            meta = self._metadata.get(mv)
            if meta is None:
                meta = await self.version_metadata(mv, end)
            query = build_query(mv.key, meta.get("inputs", []), request)
        except TimeoutError:
            # A new version's first requests wait for its metadata, within their deadline.
            return self._late_reply(target, request, rows, now, "describe its inputs")
        except ClipperError as exc:
            if app is not None:
                record_failure(app, mv, exc, rows)
            raise
        rows = query.rows
        key = query.cache_key() if mv.cache is not None else b""
        try:
            fut = mv.submit(query, key, end)
        except ClipperError as exc:
            if app is not None:
                record_failure(app, mv, exc, rows, rejected=True)
            raise
        if unanswerable(mv, fut):
            # Only the cache or a refusal could answer, at submit: say so now.
            fut.cancel()
            refusal = NoLiveReplica([mv.key])
            if app is not None:
                record_failure(app, mv, refusal, rows, rejected=True)
            raise refusal
        try:
            await wait_until([fut], end)
        except asyncio.CancelledError:
            fut.cancel()  # the client went away: withdraw the request
            raise
        if not fut.done():
            fut.cancel()
            return self._late_reply(target, request, rows, now, "answer")
        failure = fut.exception()
        if failure is not None:
            if isinstance(failure, DeadlineExceeded) and app is not None:
                count_answered(app, mv, rows, now, expired=rows)
                return self._default_reply(
                    target, request, rows, f"the deadline passed before the model ran ({failure})"
                )
            if app is not None:
                record_failure(app, mv, failure, rows)
            raise failure
        result = fut.result()
        if not isinstance(result, TensorResult):
            raise ClipperError(f"{mv.key} answered a tensor request with {type(result).__name__}")
        learn_outputs(meta, result)
        if app is not None:
            count_answered(app, mv, rows, now)
        return InferReply(
            target.name,
            mv.version,
            request.id,
            dict(request.parameters),
            select_outputs(mv.key, result, request),
        )

    def _late_reply(
        self, target: Target, request: InferRequest, rows: int, now: float, what: str
    ) -> InferReply:
        """Past the deadline: an app's default output, flagged; for a model queried
        by name, DeadlineExceeded (``what`` it did not do in time)."""
        mv, app = target.mv, target.app
        assert mv is not None
        if app is None:
            waited = (time.monotonic() - now) * 1000
            raise DeadlineExceeded(f"{mv.key} did not {what} within {waited:.0f} ms")
        count_answered(app, mv, rows, now, late=rows)
        why = f"no answer within the latency objective ({app.slo * 1000:g} ms)"
        if what != "answer":
            why += f": {mv.key} did not {what} in time"
        return self._default_reply(target, request, rows, why)

    def _default_reply(
        self, target: Target, request: InferRequest, rows: int, explanation: str
    ) -> InferReply:
        app = target.app
        assert app is not None
        value = app.default_output
        arr = outputs_to_tensor([value] * rows, rows)
        params = dict(request.parameters)
        params["default"] = True
        params["default_explanation"] = explanation
        binary = request.binary_output
        if request.outputs:
            flags = [o.binary for o in request.outputs if o.binary is not None]
            binary = flags[0] if flags else binary
        return InferReply(
            target.name,
            target.version,
            request.id,
            params,
            [OutputTensor("output", datatype_of(arr.dtype), arr, binary)],
        )


def policy_refusal(app: Application) -> str:
    """Why an application with a selection policy answers no OIP inference: its
    policy combines and scores Clipper outputs (labels, numbers, confidences),
    and answering from one of its models would bypass it silently."""
    return (
        f"application {app.name!r} selects among its models with policy"
        f" {app.policy!r}, which serves Clipper's API: query POST /{app.name}/predict,"
        f" or one of its models ({', '.join(app.linked_models)}) by name over OIP"
    )


def _rows_of(request: InferRequest) -> int:
    for t in request.inputs:
        if t.shape:
            return max(t.shape[0], 1)
    return 1
