"""Prediction pipelines: DAGs of model stages served as one application.

:mod:`~clipper_core.pipelines.model` checks a pipeline's graph (pure);
:mod:`~clipper_core.pipelines.values` turns a stage's output into the next
stage's input; :mod:`~clipper_core.pipelines.runtime` holds ``PipelineRouter``,
the :class:`~clipper_core.dataplane.QueryRouter` that walks the graph for each
query within one end-to-end deadline.
"""

from clipper_core.pipelines.model import Edge, PipelineGraph, Predicate, Stage, validate
from clipper_core.pipelines.runtime import PipelineRouter

__all__ = ["Edge", "PipelineGraph", "PipelineRouter", "Predicate", "Stage", "validate"]
