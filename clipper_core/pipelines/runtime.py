"""A pipeline at work: ``PipelineRouter``, the router of a pipeline's application.

Each input walks the DAG on its own, driven by its stages' futures (no task or
future per input or stage; one waiter per call, woken by the last walk to
settle): when a stage answers, the edges it starts are tested, and each stage
whose every incoming edge is settled either runs (every edge was taken) or is
skipped (one was not), which skips what only it leads to.  What a walk needs of
each stage is laid out once per router (``Step``).  A model stage submits to
its model version (``ModelVersion.submit``), so the stage keeps that version's
cache, queue, adaptive batching and replicas, and the inputs of concurrent
queries at one stage batch together.

One deadline covers the whole walk.  Before a stage runs, the remaining budget
must cover the stage's expected batch latency (its model version's estimator);
when it does not -- or the stage's model refuses the input as overloaded (its
expected wait exceeds the remaining deadline), or the deadline passes while a
stage works, or the queue drops the input as expired -- the input is answered
with the pipeline's default output, flagged, with an explanation that names the
stage.  So is an input that reaches a stage whose model has no live replica
(none connected, none restarting), at once and naming the model
(``Outcome.unavailable``).  A stage whose model fails fails the query with the
model's error, named after the stage.  Nothing waits past the deadline, so every
accepted query gets an answer or an error.

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
from clipper_core.dataplane.application import no_connected_model, unanswerable
from clipper_core.dataplane.futures import consume_exception, withdraw
from clipper_core.dataplane.routing import Application, ModelLookup, Outcome
from clipper_core.errors import (
    BadInput,
    ClipperError,
    DeadlineExceeded,
    ModelError,
    NoLiveReplica,
    NotFound,
    Overloaded,
)
from clipper_core.metrics import PipelineMetrics, error_kind
from clipper_core.pipelines.model import PipelineGraph, Stage
from clipper_core.pipelines.steps import Step, stage_error
from clipper_core.pipelines.values import as_input, join, json_text

if TYPE_CHECKING:
    from clipper_core.dataplane.model_version import ModelVersion

log = logging.getLogger("clipper_core.pipelines")

__all__ = ["PROBE_INTERVAL", "PipelineRouter"]

#: Seconds between queries let through to a stage whose expected latency exceeds
#: their remaining budget: they keep that estimate current (a single slow batch
#: must not shut a stage off for good).
PROBE_INTERVAL = 1.0


class _Call:
    """One ``predict`` call: what its walks share, and how many are still under
    way; wakes the call (its ``waiter``, once it waits) when the last settles."""

    __slots__ = ("app", "deadline", "left", "lookup", "router", "waiter")

    def __init__(
        self, router: PipelineRouter, lookup: ModelLookup, app: Application, deadline: float
    ) -> None:
        self.router = router
        self.lookup = lookup
        self.app = app
        self.deadline = deadline
        self.left = 0
        self.waiter: asyncio.Future[None] | None = None

    def settled(self) -> None:
        self.left -= 1
        if self.left == 0 and self.waiter is not None:
            _wake(self.waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


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
        self._steps = {name: Step(graph, s, self.metrics) for name, s in graph.stages.items()}
        self._entry = self._steps[graph.entry]
        # What a walk counts down at the joins (stages with several parents).
        self._indegree = {n: len(s.parents) for n, s in graph.stages.items() if len(s.parents) > 1}

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
        call = _Call(self, lookup, app, deadline)
        call.left = len(inputs)
        walks = [_Walk(call, x, key) for x, key in zip(inputs, keys, strict=True)]
        try:
            for walk in walks:
                walk._run(self._entry)
            remaining = deadline - time.monotonic()
            if call.left and remaining > 0:
                # One waiter and one timer for the whole call.
                loop = asyncio.get_running_loop()
                waiter = call.waiter = loop.create_future()
                timer = loop.call_later(remaining, _wake, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
        except BaseException:
            # The client went away: withdraw what is still queued.
            for walk in walks:
                walk.abandon()
            raise
        outcomes: list[Outcome] = []
        late = errored = no_model = 0
        failure: ClipperError | None = None
        for walk in walks:
            if not walk.finished:
                outcomes.append(walk.timed_out(app))
                late += 1
                continue
            exc = walk.error
            if exc is None:
                outcome = walk.outcome
                assert outcome is not None
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
    """One input's way through the pipeline, driven by the stages' futures; once
    ``finished``, it holds its ``outcome`` or the ``error`` of a stage."""

    __slots__ = (
        "call",
        "error",
        "finished",
        "in_flight",
        "key",
        "left",
        "models",
        "no_model",
        "outcome",
        "outputs",
        "ran",
        "refused",
        "waiting",
        "x",
    )

    def __init__(self, call: _Call, x: Any, key: bytes) -> None:
        self.call = call
        self.x = x
        self.key = key
        self.finished = False
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        # Made at the first join reached: edges still to settle, by stage, and
        # the stages with an incoming edge not taken.
        self.waiting: dict[str, int] | None = None
        self.refused: set[str] | None = None
        self.outputs: dict[str, Any] = {}
        self.ran: list[Step] = []
        self.models: dict[str, str] = {}  # stage -> the model version that answered
        self.in_flight: dict[str, tuple[asyncio.Future[Any], ModelVersion, float]] = {}
        self.left = len(call.router._steps)
        self.no_model = False

    # -- the walk -----------------------------------------------------------------

    def _run(self, step: Step) -> None:
        stage = step.stage
        step.counters.requests += 1
        try:
            if stage.model is None:
                assert stage.combine is not None
                value = join(stage.combine, self._parents(stage), stage.output_type, step.at)
                step.counters.answered += 1
                self._complete(step, value)
                return
            mv = self._model_version(step)
            if mv is None:
                return
            value = self._input(step, mv)
            remaining = self.call.deadline - time.monotonic()
            estimator = mv.estimator
            expected = estimator.batch_latency if estimator.observations else 0.0
            if (expected > remaining or remaining <= 0) and self.call.router.too_slow(
                stage.name, remaining, expected
            ):
                self._miss(
                    step,
                    mv,
                    f"expects {expected * 1000:.0f} ms, but {max(remaining, 0.0) * 1000:.0f} ms"
                    " of the pipeline's latency objective remain",
                )
                return
            if mv.cache is None:
                key = b""
            elif not stage.parents:
                key = self.key
            else:
                key = input_key(value, mv.input_type)
            try:
                fut = mv.submit(value, key, self.call.deadline)
            except Overloaded as exc:
                # Admission control found that the input would wait past the
                # deadline: the remaining budget cannot cover the stage, which the
                # pipeline answers with its default (a probe let through to a busy
                # stage meets this too), not with the 503 of a model's own query.
                self._miss(step, mv, f"was refused: {exc}")
                return
            if unanswerable(mv, fut):
                fut.cancel()
                self._unavailable(step, NoLiveReplica([mv.key]))
                return
        except ClipperError as exc:
            self._fail(step, exc)
            return
        except Exception as exc:  # a bug: fail this input, never the loop
            log.exception("pipeline %s: stage %s failed", self.call.router.graph.name, stage.name)
            self._fail(step, exc)
            return
        self.in_flight[stage.name] = (fut, mv, time.monotonic())
        if fut.done():
            self._answered(step, fut)
        else:
            fut.add_done_callback(lambda f: self._answered(step, f))

    def _parents(self, stage: Stage) -> list[tuple[str, Any]]:
        return [(p, self.outputs[p]) for p in stage.parents]

    def _model_version(self, step: Step) -> ModelVersion | None:
        stage = step.stage
        assert stage.model is not None
        model = self.call.lookup.models.get(stage.model)
        try:
            mv = None if model is None else model.version_for(stage.version)
        except NotFound:
            mv = None
        if mv is None:
            self.no_model = True
            which = stage.model if stage.version is None else f"{stage.model}:{stage.version}"
            self._settle(
                self.call.app.default(f"{step.at}: model {which!r} has no deployed version")
            )
        return mv

    def _input(self, step: Step, mv: ModelVersion) -> Any:
        """What the stage's model is sent: the query, a parent's output or a join."""
        stage = step.stage
        # The graph was checked against the versions deployed then: one deployed
        # since (the model deleted and redeployed) may take another type, which
        # no conversion below could make of the stage's input.
        if mv.input_type != stage.input_type:
            sent = "the pipeline takes" if not stage.parents else "the stage sends it"
            raise ModelError(  # named after the stage by _fail
                f"model {mv.key} takes {mv.input_type}, but {sent} {stage.input_type};"
                " update the pipeline"
            )
        if not stage.parents:
            return self.x
        if stage.combine == "dict":
            return json_text(dict(self._parents(stage)), step.at)
        if stage.combine == "concat":
            # Joined for the stage's model: the parents answer what it takes.
            value = join("concat", self._parents(stage), mv.input_type, step.at)
        else:
            value = self.outputs[stage.parents[0]]
        return as_input(value, mv.input_type, step.source)

    def _answered(self, step: Step, fut: asyncio.Future[Any]) -> None:
        entry = self.in_flight.pop(step.name, None)
        if self.finished or entry is None:
            consume_exception(fut)
            return
        _, mv, sent = entry
        if fut.cancelled():
            self._fail(step, ModelError(f"{mv.key} withdrew the input"), mv)
            return
        exc = fut.exception()
        if isinstance(exc, DeadlineExceeded):
            self._miss(step, mv, f"did not run before the deadline ({exc})")
            return
        if exc is not None:
            self._fail(step, exc, mv)
            return
        counters = step.counters
        counters.answered += 1
        counters.latency.observe(time.monotonic() - sent)
        self.models[step.name] = mv.key
        self._complete(step, fut.result())

    def _complete(self, step: Step, output: Any) -> None:
        self.outputs[step.name] = output
        self.ran.append(step)
        self.left -= 1
        steps = self.call.router._steps
        for when, counters, target in step.edges:
            taken = True
            if when is not None:
                try:
                    taken = when(output)
                except ClipperError as exc:
                    self._fail(step, ModelError(f"edge {step.name}->{target}: {exc}"))
                    return
            counters.evaluated += 1
            counters.taken += taken
            self._settle_edge(steps[target], taken)
            if self.finished:
                return
        if self.left == 0:
            self._finish()

    def _settle_edge(self, step: Step, taken: bool) -> None:
        if step.joins:
            if self.waiting is None:
                self.waiting = dict(self.call.router._indegree)
            if not taken:
                if self.refused is None:
                    self.refused = set()
                self.refused.add(step.name)
            self.waiting[step.name] -= 1
            if self.waiting[step.name]:
                return
            taken = self.refused is None or step.name not in self.refused
        if taken:
            self._run(step)
            return
        step.counters.skipped += 1
        self.left -= 1
        steps = self.call.router._steps
        for _, _, target in step.edges:
            self._settle_edge(steps[target], False)
        if self.left == 0:
            self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        outputs = self.outputs
        ended = [s.name for s in self.ran if outputs.keys().isdisjoint(s.targets)]
        if len(ended) == 1:
            output = outputs[ended[0]]
            model = self.models.get(ended[0])
        else:
            output = {s: outputs[s] for s in ended}
            model = None
        models = [self.models[s.name] for s in self.ran if s.name in self.models]
        self._settle(Outcome(output, model=model, models=models))

    # -- endings ------------------------------------------------------------------

    def _settle(self, outcome: Outcome) -> None:
        if not self.finished:
            self.finished = True
            self.outcome = outcome
            self.call.settled()
        self._withdraw()

    def _unavailable(self, step: Step, refusal: NoLiveReplica) -> None:
        # Answered at once, as the direct path answers: the query reached no model.
        self.no_model = True
        outcome = self.call.app.default(f"{step.at}: {no_connected_model(refusal)}")
        outcome.unavailable = refusal.models
        self._settle(outcome)

    def _miss(self, step: Step, mv: ModelVersion, why: str) -> None:
        step.counters.deadline_misses += 1
        self._settle(self.call.app.default(f"{step.at} ({mv.key}) {why}"))

    def _fail(self, step: Step, exc: BaseException, mv: ModelVersion | None = None) -> None:
        step.counters.errors += 1
        if not self.finished:
            self.finished = True
            key = None if mv is None else mv.key
            self.error = stage_error(self.call.router.graph.name, step.name, key, exc)
            self.call.settled()
        self._withdraw()

    def timed_out(self, app: Application) -> Outcome:
        """The outcome of a walk still under way at the deadline: the default,
        naming the stages it waited for."""
        names = []
        stages = self.call.router.metrics.stages
        for name, (_, mv, _) in self.in_flight.items():
            stages[name].deadline_misses += 1
            names.append(f"{name!r} ({mv.key})")
        self.abandon()
        slo_ms = f"{app.slo * 1000.0:g} ms"
        graph = self.call.router.graph
        if not names:
            return app.default(f"pipeline {graph.name}: no answer within {slo_ms}")
        return app.default(
            f"pipeline {graph.name}: stage {', '.join(names)} did not answer within"
            f" the pipeline's latency objective ({slo_ms})"
        )

    def abandon(self) -> None:
        """Nobody waits any more: withdraw the queued inputs."""
        self.finished = True
        self._withdraw()

    def _withdraw(self) -> None:
        if self.in_flight:
            for _, mv, _ in self.in_flight.values():
                mv.withdrawn += 1
            withdraw([f for f, _, _ in self.in_flight.values()])
            self.in_flight.clear()
