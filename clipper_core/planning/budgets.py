"""Latency budgets: how much of an application's objective one batch may take.

A model version's adaptive batch size aims at a *batch* latency objective.  An
application gives each model linked to it a share (:data:`BATCH_SLO_SHARE`) of
its objective, leaving the rest for queueing, the network and the frontend.

A pipeline's query crosses several stages within one objective, so its stages
split the share: a model stage gets the share divided by the number of model
stages on the longest path through it (a stage on a short side branch gets more
than one on the long main line), never less than :data:`MIN_STAGE_BATCH_SLO`.
The split is equal rather than weighted by each stage's measured batch latency:
a batch takes longer as its budget lets it grow, so a measured weight would feed
a stage's own budget back into itself.

A model version used by several apps, pipelines or stages follows the tightest
of them (a stage that pins a version binds that version alone; any other, every
version of its model: a query may ask any).  The answer is
``{(model, version): seconds}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from clipper_core.pipelines.runtime import PipelineRouter

if TYPE_CHECKING:
    from clipper_core.dataplane import Application, Model
    from clipper_core.pipelines.model import PipelineGraph

__all__ = ["BATCH_SLO_SHARE", "MIN_STAGE_BATCH_SLO", "batch_slos", "stage_budgets"]

#: A model version's batch latency objective is this share of the tightest SLO of
#: the apps linked to it (a pipeline's stages split it).  A smaller share would
#: leave room for the three batches an input behind a full queue waits for, and
#: refuse fewer inputs just below capacity, but costs the capacity itself: at 0.3
#: the storm bench's model kept 80 % of its goodput (docs/guides/benchmarks.md,
#: "Overload storms").
BATCH_SLO_SHARE = 0.5

#: The least batch objective (seconds) a pipeline stage is given, however many
#: stages share the objective: below it a batch round trip to a replica cannot
#: be met and the stage would be held at batches of one.  Never more than the
#: pipeline's whole share.
MIN_STAGE_BATCH_SLO = 0.001


def stage_budgets(graph: PipelineGraph, slo: float) -> dict[str, float]:
    """Each model stage's batch latency objective (seconds) in a pipeline.

    Args:
        graph: The pipeline (its stages in topological order).
        slo: Its end-to-end latency objective, seconds.

    Returns:
        ``{stage name: seconds}`` for the stages that name a model: the
        pipeline's share split equally among the model stages of the longest
        path through the stage, floored at :data:`MIN_STAGE_BATCH_SLO` (but at
        most the whole share).
    """
    stages = graph.stages
    weight = {name: int(s.model is not None) for name, s in stages.items()}
    # Model stages on the longest path from the entry to a stage, and from it on.
    upto: dict[str, int] = {}
    for name, stage in stages.items():
        upto[name] = weight[name] + max((upto[p] for p in stage.parents), default=0)
    onward: dict[str, int] = {}
    for name in reversed(list(stages)):
        below = (onward[e.target] for e in stages[name].edges)
        onward[name] = weight[name] + max(below, default=0)
    share = slo * BATCH_SLO_SHARE
    floor = min(MIN_STAGE_BATCH_SLO, share)
    return {
        name: max(share / (upto[name] + onward[name] - 1), floor)
        for name, stage in stages.items()
        if stage.model is not None
    }


def batch_slos(
    apps: Mapping[str, Application], models: Mapping[str, Model]
) -> dict[tuple[str, str], float]:
    """The batch latency objective (seconds) of every version of a linked model.

    An application's linked models get :data:`BATCH_SLO_SHARE` of its SLO; a
    pipeline's stage models their :func:`stage_budgets`; each version the
    tightest that applies to it.  Versions that nothing links are left out
    (their data plane keeps its objective for unlinked models).

    Args:
        apps: The registered applications (pipelines among them), by name.
        models: The deployed models, by name.

    Returns:
        ``{(model name, version): seconds}``.
    """
    per_model: dict[str, float] = {}  # binds every version of the model
    per_version: dict[tuple[str, str], float] = {}  # a stage that pins its version
    for app in apps.values():
        router = app.selector
        if not isinstance(router, PipelineRouter):
            for name in app.linked_models:
                per_model[name] = min(per_model.get(name, math.inf), app.slo * BATCH_SLO_SHARE)
            continue
        graph = router.graph
        for stage_name, budget in stage_budgets(graph, app.slo).items():
            stage = graph.stages[stage_name]
            assert stage.model is not None
            if stage.version is None:
                per_model[stage.model] = min(per_model.get(stage.model, math.inf), budget)
            else:
                key = (stage.model, stage.version)
                per_version[key] = min(per_version.get(key, math.inf), budget)
    out: dict[tuple[str, str], float] = {}
    for model in models.values():
        for version in model.versions:
            key = (model.name, version)
            budget = min(per_model.get(model.name, math.inf), per_version.get(key, math.inf))
            if budget < math.inf:
                out[key] = budget
    return out
