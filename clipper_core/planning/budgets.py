"""Latency budgets: how much of an application's objective one batch may take.

A model version's adaptive batch size aims at a *batch* latency objective.  The
default rule gives a model a share of the tightest objective among the apps
linked to it, leaving the rest for queueing, the network and the frontend.
Pipelines and the planner will set per-stage budgets through the same
``{(model, version): seconds}`` answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clipper_core.dataplane import Application, Model

__all__ = ["BATCH_SLO_SHARE", "batch_slos"]

#: A model version's batch latency objective is this share of the tightest SLO of
#: the apps linked to it.
BATCH_SLO_SHARE = 0.5


def batch_slos(
    apps: Mapping[str, Application], models: Mapping[str, Model]
) -> dict[tuple[str, str], float]:
    """The batch latency objective (seconds) of every version of a linked model.

    Every version of a model follows the tightest app linked to the model: a
    query may ask for any version.  Versions of models no app links are left out
    (their data plane keeps its objective for unlinked models).

    Args:
        apps: The registered applications, by name.
        models: The deployed models, by name.

    Returns:
        ``{(model name, version): seconds}``.
    """
    tightest: dict[str, float] = {}
    for app in apps.values():
        for name in app.linked_models:
            tightest[name] = min(tightest.get(name, math.inf), app.slo)
    return {
        (model.name, version): tightest[model.name] * BATCH_SLO_SHARE
        for model in models.values()
        if model.name in tightest
        for version in model.versions
    }
