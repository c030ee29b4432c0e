"""A pipeline at work: ``PipelineRouter``, the router of a pipeline's application.

Each input walks the DAG on its own, driven by its stages' futures (no task per
input or per stage): when a stage answers, the edges it starts are tested, and
each stage whose every incoming edge is settled either runs (every edge was
taken) or is skipped (one was not), which skips what only it leads to.  A model
stage submits to its model version (``ModelVersion.submit``), so the stage keeps
that version's cache, queue, adaptive batching and replicas, and the inputs of
concurrent queries at one stage batch together.

One deadline covers the whole walk.  Before a stage runs, the remaining budget
must cover the stage's expected batch latency (its model version's estimator);
when it does not -- or the deadline passes while a stage works, or the queue drops
the input as expired -- the input is answered with the pipeline's default output,
flagged, with an explanation that names the stage.  A stage whose model fails
fails the query with the model's error, named after the stage.  Nothing waits
past the deadline, so every accepted query gets an answer or an error.

The answer is the output of the stage the walk ended at: the stage that ran and
none of whose successors ran.  If the walk ended at several (branches that never
join), the answer is an object of their outputs by stage name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from clipper_core.clipper_api import input_key
from clipper_core.dataplane.futures import consume_exception, wait_until, withdraw
from clipper_core.dataplane.routing import Application, ModelLookup, Outcome
from clipper_core.errors import BadInput, ClipperError, DeadlineExceeded, ModelError, NotFound
from clipper_core.metrics import PipelineMetrics, error_kind
from clipper_core.pipelines.model import PipelineGraph, Stage
from clipper_core.pipelines.values import as_input, join, json_text

if TYPE_CHECKING:
    from clipper_core.dataplane.model_version import ModelVersion

log = logging.getLogger("clipper_core.pipelines")

__all__ = ["PROBE_INTERVAL", "PipelineRouter"]

#: Seconds between queries let through to a stage whose expected latency exceeds
#: their remaining budget: they keep that estimate current (a single slow batch
#: must not shut a stage off for good).
PROBE_INTERVAL = 1.0


def stage_error(pipeline: str, stage: str, model: str | None, exc: BaseException) -> ClipperError:
    """``exc`` re-raised under the pipeline and stage it happened at, keeping its
    class (so its HTTP status and gRPC code) where it can."""
    where = f"pipeline {pipeline}: stage {stage!r}" + (f" ({model})" if model else "")
    message = f"{where} failed: {exc}"
    if not isinstance(exc, ClipperError):
        return ModelError(f"{where} failed: {type(exc).__name__}: {exc}")
    try:
        err = type(exc)(message)
    except TypeError:
        err = ModelError(message)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        err.retry_after = retry_after  # type: ignore[attr-defined]
    return err


class PipelineRouter:
    """Answers a pipeline's queries (a :class:`~clipper_core.dataplane.QueryRouter`).

    Args:
        graph: The validated pipeline.
    """

    def __init__(self, graph: PipelineGraph) -> None:
        self.graph = graph
        self.metrics = PipelineMetrics(list(graph.stages), [e.label for e in graph.edges])
        # Stage -> when the next input may probe a stage deemed too slow.
        self._probe_at: dict[str, float] = {}

    @property
    def routes_queries(self) -> bool:
        """Always: a pipeline's queries go through its stages."""
        return True

    async def predict(
        self,
        lookup: ModelLookup,
        app: Application,
        inputs: Sequence[Any],
        keys: Sequence[bytes],
        deadline: float,
        *,
        version: str | None = None,
        uid: int = 0,
        raise_errors: bool = True,
    ) -> list[Outcome]:
        """Walk the pipeline for each input, all by the monotonic ``deadline``."""
        if version is not None:
            raise BadInput(f"pipeline {app.name!r} takes no version: each stage names its model's")
        started = time.monotonic()
        walks = [
            _Walk(self, lookup, app, x, key, deadline) for x, key in zip(inputs, keys, strict=True)
        ]
        try:
            for walk in walks:
                walk.start()
            await wait_until([w.done for w in walks], deadline)
        except BaseException:
            # The client went away: withdraw what is still queued.
            for walk in walks:
                walk.abandon()
            raise
        outcomes: list[Outcome] = []
        late = errored = no_model = 0
        failure: ClipperError | None = None
        for walk in walks:
            done = walk.done
            if not done.done():
                outcomes.append(walk.timed_out(app))
                late += 1
                continue
            exc = done.exception()
            if exc is None:
                outcome = done.result()
                outcomes.append(outcome)
                if walk.no_model:
                    no_model += 1
                elif outcome.default:
                    late += 1
            elif raise_errors:
                failure = failure or (
                    exc if isinstance(exc, ClipperError) else ModelError(str(exc))
                )
                outcomes.append(app.default(str(exc)))
            else:
                outcomes.append(app.default(str(exc)))
                app.metrics.error(error_kind(exc))
                errored += 1
        if failure is not None:
            app.metrics.error(failure.kind, len(inputs), received=True)
            raise failure
        if no_model:
            app.metrics.unanswered(no_model, "no_model")
        if len(inputs) > no_model:
            elapsed = time.monotonic() - started
            app.metrics.answered(len(inputs) - no_model, late, 0, errored, elapsed, app.slo)
        return outcomes

    async def update(
        self, lookup: ModelLookup, app: Application, uid: int, x: Any, key: bytes, label: Any
    ) -> dict[str, Any]:
        """Pipelines learn nothing from feedback."""
        raise BadInput(
            f"{app.name!r} is a pipeline: it learns nothing from feedback"
            " (POST /<app>/update is for applications with a selection policy)"
        )

    def too_slow(self, stage: str, remaining: float, expected: float) -> bool:
        """Whether a stage expected to take ``expected`` seconds is refused an
        input with ``remaining`` seconds left (one probe per interval goes on)."""
        if remaining <= 0:
            return True
        if expected <= remaining:
            return False
        now = time.monotonic()
        if now < self._probe_at.get(stage, 0.0):
            return True
        self._probe_at[stage] = now + PROBE_INTERVAL
        return False


class _Walk:
    """One input's way through the pipeline; ``done`` resolves with its outcome
    (or the error of a stage), driven by the stages' futures."""

    __slots__ = (
        "app",
        "deadline",
        "done",
        "graph",
        "in_flight",
        "key",
        "left",
        "lookup",
        "models",
        "no_model",
        "outputs",
        "ran",
        "refused",
        "router",
        "waiting",
        "x",
    )

    def __init__(
        self,
        router: PipelineRouter,
        lookup: ModelLookup,
        app: Application,
        x: Any,
        key: bytes,
        deadline: float,
    ) -> None:
        self.router = router
        self.graph = router.graph
        self.lookup = lookup
        self.app = app
        self.x = x
        self.key = key
        self.deadline = deadline
        self.done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.waiting = {name: len(s.parents) for name, s in self.graph.stages.items()}
        self.refused: set[str] = set()  # stages with an incoming edge not taken
        self.outputs: dict[str, Any] = {}
        self.ran: list[str] = []
        self.models: dict[str, str] = {}  # stage -> the model version that answered
        self.in_flight: dict[str, tuple[asyncio.Future[Any], ModelVersion, float]] = {}
        self.left = len(self.graph.stages)
        self.no_model = False

    # -- the walk -----------------------------------------------------------------

    def start(self) -> None:
        self._run(self.graph.stages[self.graph.entry])

    def _run(self, stage: Stage) -> None:
        counters = self.router.metrics.stages[stage.name]
        counters.requests += 1
        try:
            if stage.model is None:
                assert stage.combine is not None
                value = join(
                    stage.combine, self._parents(stage), stage.output_type, self._at(stage)
                )
                counters.answered += 1
                self._complete(stage, value)
                return
            mv = self._model_version(stage)
            if mv is None:
                return
            value = self._input(stage, mv)
            remaining = self.deadline - time.monotonic()
            estimator = mv.estimator
            expected = estimator.batch_latency if estimator.observations else 0.0
            if self.router.too_slow(stage.name, remaining, expected):
                self._miss(
                    stage,
                    mv,
                    f"expects {expected * 1000:.0f} ms, but {max(remaining, 0.0) * 1000:.0f} ms"
                    " of the pipeline's latency objective remain",
                )
                return
            if mv.cache is None:
                key = b""
            elif stage.name == self.graph.entry:
                key = self.key
            else:
                key = input_key(value, mv.input_type)
            fut = mv.submit(value, key, self.deadline)
        except ClipperError as exc:
            self._fail(stage, exc)
            return
        except Exception as exc:  # a bug: fail this input, never the loop
            log.exception("pipeline %s: stage %s failed", self.graph.name, stage.name)
            self._fail(stage, exc)
            return
        self.in_flight[stage.name] = (fut, mv, time.monotonic())
        if fut.done():
            self._answered(stage, fut)
        else:
            fut.add_done_callback(lambda f, s=stage: self._answered(s, f))

    def _parents(self, stage: Stage) -> list[tuple[str, Any]]:
        return [(p, self.outputs[p]) for p in stage.parents]

    def _at(self, stage: Stage) -> str:
        return f"pipeline {self.graph.name}: stage {stage.name!r}"

    def _model_version(self, stage: Stage) -> ModelVersion | None:
        assert stage.model is not None
        model = self.lookup.models.get(stage.model)
        try:
            mv = None if model is None else model.version_for(stage.version)
        except NotFound:
            mv = None
        if mv is None:
            self.no_model = True
            which = stage.model if stage.version is None else f"{stage.model}:{stage.version}"
            self._settle(
                self.app.default(f"{self._at(stage)}: model {which!r} has no deployed version")
            )
        return mv

    def _input(self, stage: Stage, mv: ModelVersion) -> Any:
        """What the stage's model is sent: the query, a parent's output or a join."""
        if not stage.parents:
            if mv.input_type != self.graph.input_type:
                raise ModelError(
                    f"{self._at(stage)}: model {mv.key} takes {mv.input_type}, but the"
                    f" pipeline takes {self.graph.input_type}; update the pipeline"
                )
            return self.x
        if stage.combine == "dict":
            return json_text(dict(self._parents(stage)), self._at(stage))
        if stage.combine == "concat":
            value = join("concat", self._parents(stage), stage.output_type, self._at(stage))
            source = f"the concat of {self._at(stage)}"
        else:
            value = self.outputs[stage.parents[0]]
            source = f"pipeline {self.graph.name}: stage {stage.parents[0]!r}"
        return as_input(value, mv.input_type, source)

    def _answered(self, stage: Stage, fut: asyncio.Future[Any]) -> None:
        entry = self.in_flight.pop(stage.name, None)
        if self.done.done() or entry is None:
            consume_exception(fut)
            return
        _, mv, sent = entry
        if fut.cancelled():
            self._fail(stage, ModelError(f"{mv.key} withdrew the input"), mv)
            return
        exc = fut.exception()
        if isinstance(exc, DeadlineExceeded):
            self._miss(stage, mv, f"did not run before the deadline ({exc})")
            return
        if exc is not None:
            self._fail(stage, exc, mv)
            return
        counters = self.router.metrics.stages[stage.name]
        counters.answered += 1
        counters.latency.observe(time.monotonic() - sent)
        self.models[stage.name] = mv.key
        self._complete(stage, fut.result())

    def _complete(self, stage: Stage, output: Any) -> None:
        self.outputs[stage.name] = output
        self.ran.append(stage.name)
        self.left -= 1
        edges = self.router.metrics.edges
        for edge in stage.edges:
            taken = True
            if edge.when is not None:
                try:
                    taken = edge.when(output)
                except ClipperError as exc:
                    self._fail(stage, ModelError(f"edge {edge.label}: {exc}"))
                    return
            counters = edges[edge.label]
            counters.evaluated += 1
            counters.taken += taken
            self._settle_edge(edge.target, taken)
            if self.done.done():
                return
        if self.left == 0:
            self._finish()

    def _settle_edge(self, target: str, taken: bool) -> None:
        if not taken:
            self.refused.add(target)
        self.waiting[target] -= 1
        if self.waiting[target]:
            return
        stage = self.graph.stages[target]
        if target not in self.refused:
            self._run(stage)
            return
        self.router.metrics.stages[target].skipped += 1
        self.left -= 1
        for edge in stage.edges:
            self._settle_edge(edge.target, False)
        if self.left == 0:
            self._finish()

    def _finish(self) -> None:
        if self.done.done():
            return
        ended = [
            s
            for s in self.ran
            if not any(e.target in self.outputs for e in self.graph.stages[s].edges)
        ]
        if len(ended) == 1:
            output = self.outputs[ended[0]]
            model = self.models.get(ended[0])
        else:
            output = {s: self.outputs[s] for s in ended}
            model = None
        models = [self.models[s] for s in self.ran if s in self.models]
        self._settle(Outcome(output, model=model, models=models))

    # -- endings ------------------------------------------------------------------

    def _settle(self, outcome: Outcome) -> None:
        if not self.done.done():
            self.done.set_result(outcome)
        self._withdraw()

    def _miss(self, stage: Stage, mv: ModelVersion, why: str) -> None:
        self.router.metrics.stages[stage.name].deadline_misses += 1
        self._settle(self.app.default(f"{self._at(stage)} ({mv.key}) {why}"))

    def _fail(self, stage: Stage, exc: BaseException, mv: ModelVersion | None = None) -> None:
        self.router.metrics.stages[stage.name].errors += 1
        if not self.done.done():
            key = None if mv is None else mv.key
            self.done.set_exception(stage_error(self.graph.name, stage.name, key, exc))
        self._withdraw()

    def timed_out(self, app: Application) -> Outcome:
        """The outcome of a walk still under way at the deadline: the default,
        naming the stages it waited for."""
        names = []
        for name, (_, mv, _) in self.in_flight.items():
            self.router.metrics.stages[name].deadline_misses += 1
            names.append(f"{name!r} ({mv.key})")
        self.abandon()
        slo_ms = f"{app.slo * 1000.0:g} ms"
        if not names:
            return app.default(f"pipeline {self.graph.name}: no answer within {slo_ms}")
        return app.default(
            f"pipeline {self.graph.name}: stage {', '.join(names)} did not answer within"
            f" the pipeline's latency objective ({slo_ms})"
        )

    def abandon(self) -> None:
        """Nobody waits any more: withdraw the queued inputs."""
        if not self.done.cancel():
            consume_exception(self.done)
        self._withdraw()

    def _withdraw(self) -> None:
        if self.in_flight:
            for _, mv, _ in self.in_flight.values():
                mv.withdrawn += 1
            withdraw([f for f, _, _ in self.in_flight.values()])
            self.in_flight.clear()
