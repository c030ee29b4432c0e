"""What changed in a pipeline, as a declarative apply shows it: each stage, edge
and setting that differs, for people, and the record fields that differ."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["pipeline_difference"]


def _stage_model(stage: Mapping[str, Any]) -> str:
    model, version = stage.get("model"), stage.get("version")
    if model is None:
        return "none"
    return f"{model}:{version}" if version is not None else str(model)


def pipeline_difference(
    old: Mapping[str, Any], new: Mapping[str, Any]
) -> tuple[list[str], tuple[str, ...]]:
    """How pipeline ``new`` differs from ``old`` (both ``PipelineRecord.to_dict()``
    forms): the differences for people, and the fields that differ."""
    details: list[str] = []
    fields: list[str] = []
    for key in ("input_type", "slo_micros", "default_output"):
        if old.get(key) != new.get(key):
            details.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
            fields.append(key)
    before_stages = len(details)
    old_stages = {s["name"]: s for s in old.get("stages", [])}
    new_stages = {s["name"]: s for s in new.get("stages", [])}
    for name in old_stages.keys() - new_stages.keys():
        details.append(f"stage {name} removed")
    for name, stage in new_stages.items():
        before = old_stages.get(name)
        if before is None:
            details.append(f"stage {name} added")
            continue
        if _stage_model(before) != _stage_model(stage):
            details.append(f"stage {name} model {_stage_model(before)} -> {_stage_model(stage)}")
        for key in sorted(set(before) | set(stage)):
            if key not in ("name", "model", "version") and before.get(key) != stage.get(key):
                details.append(f"stage {name} {key} {before.get(key)!r} -> {stage.get(key)!r}")
    if list(old_stages) != list(new_stages) and set(old_stages) == set(new_stages):
        details.append("stages reordered")
    if len(details) > before_stages:
        fields.append("stages")
    old_edges = {(e["from"], e["to"]): e for e in old.get("edges", [])}
    new_edges = {(e["from"], e["to"]): e for e in new.get("edges", [])}
    for pair in sorted(old_edges.keys() - new_edges.keys()):
        details.append(f"edge {pair[0]}->{pair[1]} removed")
    for pair, edge in new_edges.items():
        before = old_edges.get(pair)
        if before is None:
            details.append(f"edge {pair[0]}->{pair[1]} added")
        elif before != edge:
            label = f"{pair[0]}->{pair[1]}"
            details.append(f"edge {label} when {before.get('when')} -> {edge.get('when')}")
    if old.get("edges") != new.get("edges"):
        fields.append("edges")
        if not any(d.startswith("edge ") for d in details):
            details.append("edges reordered")
    return details, tuple(fields)
