"""What a pipeline's walks share, laid out once per router: each stage's
:class:`Step`, and :func:`stage_error`, which names the stage an error happened at."""

from __future__ import annotations

from clipper_core.errors import ClipperError, ModelError
from clipper_core.metrics import EdgeMetrics, PipelineMetrics, StageMetrics
from clipper_core.pipelines.model import PipelineGraph, Predicate, Stage

__all__ = ["Step", "stage_error"]


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


class Step:
    """What a walk needs of one stage, laid out once per router."""

    __slots__ = ("at", "counters", "edges", "joins", "name", "source", "stage", "targets")

    def __init__(self, graph: PipelineGraph, stage: Stage, metrics: PipelineMetrics) -> None:
        self.stage = stage
        self.name = stage.name
        self.counters: StageMetrics = metrics.stages[stage.name]
        #: The outgoing edges: (predicate or None, counters, target), in order.
        self.edges: tuple[tuple[Predicate | None, EdgeMetrics, str], ...] = tuple(
            (e.when, metrics.edges[e.label], e.target) for e in stage.edges
        )
        self.targets = frozenset(e.target for e in stage.edges)
        self.joins = len(stage.parents) > 1  # settled by several edges
        self.at = f"pipeline {graph.name}: stage {stage.name!r}"
        # Where the stage's input comes from, for an error about it.
        if stage.combine == "concat":
            self.source = f"the concat of {self.at}"
        elif stage.parents:
            self.source = f"pipeline {graph.name}: stage {stage.parents[0]!r}"
        else:
            self.source = self.at
