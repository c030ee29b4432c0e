"""A pipeline's graph: stages, edges and predicates, checked at registration.

:func:`validate` turns a :class:`~clipper_core.store.records.PipelineRecord`
(whose own shape is already checked) and the deployed models' input types into a
:class:`PipelineGraph`, or raises with a message that names the stage or edge at
fault:

* one entry (the only stage with no incoming edge), a model stage, taking the
  pipeline's input type; no cycle (so every stage is reachable from the entry);
* every stage's model exists (``NotFound``), in the version it names;
* types match along every edge: a model stage takes its parent's ``output_type``
  (a model stage that declares none answers ``"json"``, which feeds no model); a
  stage with several parents joins them with its ``combine``: ``"concat"`` (all
  parents answer one type, which the join answers) or ``"dict"`` (an object by
  parent name, which a model taking ``strings`` receives as JSON text).

Pure: no I/O, no event loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipper_core.errors import BadInput, ClipperError, ModelError, NotFound
from clipper_core.store.records import INPUT_TYPES, ModelRecord, PipelineRecord

__all__ = ["JSON", "Edge", "PipelineGraph", "Predicate", "Stage", "new_version_refusal", "validate"]

#: The output type of a value that feeds no model directly (any JSON).
JSON = "json"

#: Model name -> {version: input type}: what :func:`validate` checks stages against.
ModelTypes = Mapping[str, Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class Predicate:
    """A conditional edge's test of its source stage's output.

    ``field`` picks a part of the output first (a list index or an object key); a
    one-element array or list counts as its element.
    """

    op: str
    value: Any
    field: int | str | None = None

    def __call__(self, output: Any) -> bool:
        """Whether the edge is taken for ``output``.

        Raises:
            ModelError: The output has no such field, or the operator cannot
                compare it with the value.
        """
        v = output
        try:
            if self.field is not None:
                v = v[self.field]
            v = _scalar(v)
            op, want = self.op, self.value
            if op == "==":
                return bool(v == want)
            if op == "!=":
                return bool(v != want)
            if op == "in":
                return v in want
            if op == "not in":
                return v not in want
            comparable = (
                isinstance(v, str)
                if isinstance(want, str)
                else isinstance(v, int | float) and not isinstance(v, bool)
            )
            if not comparable:
                raise TypeError(f"{type(v).__name__} is not comparable with {want!r}")
            if op == "<":
                return bool(v < want)
            if op == "<=":
                return bool(v <= want)
            if op == ">":
                return bool(v > want)
            return bool(v >= want)
        except (LookupError, TypeError, ValueError) as exc:
            shown = repr(output)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise ModelError(f"cannot test {self.describe()} on output {shown}: {exc}") from None

    def describe(self) -> str:
        """The predicate as text, e.g. ``output[0] >= 0.5``."""
        target = "output" if self.field is None else f"output[{self.field!r}]"
        return f"{target} {self.op} {self.value!r}"


def _scalar(v: Any) -> Any:
    # An output is an array or a list depending on how its batch was encoded
    # (a tensor when the batch's rows share a shape): compare them alike.
    if isinstance(v, np.ndarray):
        v = v.reshape(()).item() if v.size == 1 else v.tolist()
    elif isinstance(v, np.generic):
        v = v.item()
    elif isinstance(v, list) and len(v) == 1:
        v = v[0]
    if isinstance(v, float) and math.isnan(v):
        raise ValueError("the output is NaN")
    return v


@dataclass(frozen=True, slots=True)
class Edge:
    """``target`` takes ``source``'s output (when ``when`` holds, if it is set)."""

    source: str
    target: str
    when: Predicate | None

    @property
    def label(self) -> str:
        return f"{self.source}->{self.target}"


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage, resolved.

    Attributes:
        name: The stage name.
        model: The model it asks, or None for a join without a model.
        version: The model version it pins, or None for the current one.
        input_type: What its model takes (None for a join without a model).
        output_type: What it answers (declared, or derived).
        combine: How its parents' outputs are joined, or None (one parent).
        parents: Its parents, in the order of their edges.
        edges: Its outgoing edges, in declaration order.
    """

    name: str
    model: str | None
    version: str | None
    input_type: str | None
    output_type: str
    combine: str | None
    parents: tuple[str, ...]
    edges: tuple[Edge, ...]


@dataclass(frozen=True, slots=True)
class PipelineGraph:
    """A validated pipeline.

    Attributes:
        name: The pipeline name.
        input_type: What queries send.
        stages: Every stage by name, in topological order (the entry first).
        edges: Every edge, in declaration order.
        entry: The entry stage's name.
    """

    name: str
    input_type: str
    stages: Mapping[str, Stage]
    edges: tuple[Edge, ...]
    entry: str

    @property
    def models(self) -> list[str]:
        """The model names the stages ask, once each, in stage order."""
        return list(dict.fromkeys(s.model for s in self.stages.values() if s.model is not None))


def validate(rec: PipelineRecord, model_types: ModelTypes | None) -> PipelineGraph:
    """Check ``rec``'s graph against the deployed models.

    Args:
        rec: The pipeline (its shape already checked by the record).
        model_types: Every deployed model's versions and their input types; None
            checks the graph alone (a pipeline restored from the store, whose
            models the query path checks as it goes).

    Raises:
        BadInput: No single entry, a cycle, a type mismatch, a join without a
            combine, a join as the entry.
        NotFound: A stage names a model, or a version, that is not deployed.
    """
    edges = tuple(
        Edge(e["from"], e["to"], None if e["when"] is None else Predicate(**e["when"]))
        for e in rec.edges
    )
    declared = {s["name"]: s for s in rec.stages}
    parents: dict[str, list[str]] = {name: [] for name in declared}
    children: dict[str, list[Edge]] = {name: [] for name in declared}
    for edge in edges:
        parents[edge.target].append(edge.source)
        children[edge.source].append(edge)
    entries = [name for name in declared if not parents[name]]
    if len(entries) != 1:
        if not entries:
            raise BadInput(f"pipeline {rec.name}: every stage has a parent; one must be the entry")
        raise BadInput(
            f"pipeline {rec.name} has {len(entries)} entry stages ({', '.join(entries)});"
            " exactly one stage may have no incoming edge"
        )
    order = _topological(rec.name, list(declared), children)
    stages: dict[str, Stage] = {}
    for name in order:
        raw = declared[name]
        stages[name] = _resolve(rec, raw, parents[name], tuple(children[name]), stages, model_types)
    entry = stages[entries[0]]
    if entry.model is None:
        raise BadInput(f"pipeline {rec.name}: the entry stage {entry.name!r} must name a model")
    return PipelineGraph(rec.name, rec.input_type, stages, edges, entry.name)


def _topological(
    pipeline: str, names: Sequence[str], children: Mapping[str, list[Edge]]
) -> list[str]:
    indegree = dict.fromkeys(names, 0)
    for edges in children.values():
        for edge in edges:
            indegree[edge.target] += 1
    ready = [n for n in names if indegree[n] == 0]
    order: list[str] = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for edge in children[name]:
            indegree[edge.target] -= 1
            if indegree[edge.target] == 0:
                ready.append(edge.target)
    if len(order) < len(names):
        looped = [n for n in names if indegree[n] > 0]
        raise BadInput(f"pipeline {pipeline}: the edges make a cycle through {', '.join(looped)}")
    return order


def new_version_refusal(
    rec: ModelRecord, pipelines: Iterable[PipelineRecord], model_types: ModelTypes
) -> str | None:
    """Why deploying ``rec``, a new model version, would break one of
    ``pipelines`` (its input type breaks a stage that follows the model's
    current version), or None.  ``model_types`` are the versions deployed
    before it; a pipeline broken already (a model deleted...) is not its doing."""
    after = {
        **model_types,
        rec.name: {**model_types.get(rec.name, {}), rec.version: rec.input_type},
    }
    for p in pipelines:
        if not any(s.get("model") == rec.name for s in p.stages):
            continue
        try:
            validate(p, model_types)
        except ClipperError:
            continue
        try:
            validate(p, after)
        except ClipperError as exc:
            return (
                f"model {rec.key} takes {rec.input_type}, which pipeline {p.name} cannot"
                f" send it ({exc}); pin the pipeline's stage to a version first"
            )
    return None


def _resolve(
    rec: PipelineRecord,
    raw: Mapping[str, Any],
    parents: list[str],
    edges: tuple[Edge, ...],
    done: Mapping[str, Stage],
    model_types: ModelTypes | None,
) -> Stage:
    """A stage whose parents are resolved, with its types checked."""
    name, model, combine = raw["name"], raw["model"], raw["combine"]
    where = f"pipeline {rec.name}, stage {name!r}"
    if len(parents) > 1 and combine is None:
        raise BadInput(
            f"{where} joins {len(parents)} parents ({', '.join(parents)}): it needs a"
            " combine ('concat' or 'dict')"
        )
    if combine is not None and not parents:
        raise BadInput(f"{where} has a combine but no parent to join")
    # What the stage receives: the query, one parent's output, or the join's.
    received = rec.input_type if not parents else _joined(where, combine, parents, done)
    input_type = None
    if model is not None:
        wanted = "strings" if combine == "dict" else received
        input_type = (
            wanted
            if model_types is None
            else _model_input_type(where, model, raw["version"], model_types)
        )
        if input_type != wanted:
            raise BadInput(_mismatch(where, model, input_type, received, combine, parents, done))
        output_type = raw["output_type"] or JSON
    else:
        output_type = received
        if raw["output_type"] not in (None, received):
            raise BadInput(
                f"{where} joins into {received}, but declares output_type {raw['output_type']!r}"
            )
    return Stage(
        name, model, raw["version"], input_type, output_type, combine, tuple(parents), edges
    )


def _joined(where: str, combine: str | None, parents: list[str], done: Mapping[str, Stage]) -> str:
    types = [done[p].output_type for p in parents]
    if combine is None:
        return types[0]
    if combine == "dict":
        return JSON
    if len(set(types)) != 1 or types[0] not in INPUT_TYPES:
        listed = ", ".join(f"{p}: {t}" for p, t in zip(parents, types, strict=True))
        raise BadInput(
            f"{where} concatenates its parents, which must all answer one of"
            f" {sorted(INPUT_TYPES)}; they answer {listed}"
        )
    return types[0]


def _model_input_type(where: str, model: str, version: str | None, model_types: ModelTypes) -> str:
    versions = model_types.get(model)
    if not versions:
        raise NotFound(f"{where}: model {model!r} is not deployed")
    if version is not None:
        if version not in versions:
            raise NotFound(f"{where}: model {model!r} has no version {version!r}")
        return versions[version]
    kinds = set(versions.values())
    if len(kinds) > 1:
        listed = ", ".join(f"{v}: {t}" for v, t in sorted(versions.items()))
        raise BadInput(
            f"{where}: the versions of model {model!r} take different input types ({listed});"
            " pin one with 'version'"
        )
    return kinds.pop()


def _mismatch(
    where: str,
    model: str,
    takes: str,
    received: str,
    combine: str | None,
    parents: list[str],
    done: Mapping[str, Stage],
) -> str:
    if combine == "dict":
        return (
            f"{where}: a 'dict' join reaches its model as JSON text, so model {model!r}"
            f" must take strings, not {takes}"
        )
    if not parents:
        return (
            f"{where}: the entry's model {model!r} takes {takes}, but the pipeline takes {received}"
        )
    source = f"stage {parents[0]!r}" if combine is None else f"the {combine} of its parents"
    if received == JSON and combine is None and done[parents[0]].model is None:
        # A model-less join answers what it joins (it cannot declare another
        # output_type): the documented way is a model on the join itself.
        return (
            f"{where}: model {model!r} takes {takes}, but {source} joins its parents"
            f" into json; put model {model!r} on {parents[0]!r} instead (a join with a"
            " model sends it the joined value; a 'dict' join as JSON text, for a model"
            " that takes strings)"
        )
    if received == JSON and combine is None:
        return (
            f"{where}: model {model!r} takes {takes}, but {source} declares no output_type"
            f" (json); declare output_type {takes!r} on {parents[0]!r} if it answers {takes}"
        )
    return f"{where}: model {model!r} takes {takes}, but {source} answers {received}"
