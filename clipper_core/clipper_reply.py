"""Clipper's REST replies: ``{"query_id", "output", "default"}`` plus
``"default_explanation"`` when the default output was returned, and the keys
beyond Clipper's (``model``, ``models``, ``confidence``, ``missing``).

Outputs become JSON as :mod:`clipper_core.output_json` says (a non-finite number
is named).  :mod:`clipper_core.clipper_api` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from clipper_core.output_json import jsonable as _jsonable
from clipper_core.output_json import jsonable_native as _jsonable_native

__all__ = [
    "DEFAULT_EXPLANATION",
    "Answered",
    "format_batch_reply",
    "format_reply",
    "reply_fields",
]

#: Clipper's explanation when the SLO passed before any model answered.
DEFAULT_EXPLANATION = "Failed to retrieve a prediction response within the specified latency SLO"


def format_reply(
    query_id: int,
    output: Any,
    default: bool,
    explanation: str | None = None,
    extra: dict[str, Any] | None = None,
    native_arrays: bool = False,
) -> dict[str, Any]:
    """One prediction reply in Clipper's shape.

    Args:
        query_id: The query's id.
        output: The model's (or the combined) output; numpy arrays and scalars become
            lists and numbers, bytes become base64.  Strings stay strings, even when
            they look like numbers: the model decides what it returns.
        default: Whether this is the application's default output.
        explanation: Why the default was returned (``default_explanation``); when
            ``default`` and no explanation is given, Clipper's SLO message is used.
        extra: More keys (``"models"``, ``"confidence"``...); they cannot replace
            the keys above.
        native_arrays: Leave a numeric ``output`` array an array where orjson's
            ``OPT_SERIALIZE_NUMPY`` writes it as the same JSON as its list (for a
            reply serialised with that option, as ``json_response`` does).
    """
    reply: dict[str, Any] = {
        "query_id": query_id,
        "output": _jsonable_native(output) if native_arrays else _jsonable(output),
        "default": default,
    }
    if default:
        reply["default_explanation"] = (
            explanation if explanation is not None else DEFAULT_EXPLANATION
        )
    if extra:
        for key, value in extra.items():
            if key not in reply:
                reply[key] = _jsonable(value)
    return reply


class Answered(Protocol):
    """Which model versions answered an input (``dataplane.Outcome`` is one)."""

    model: str | None
    models: list[str] | None
    confidence: float | None
    missing: list[str] | None


def reply_fields(outcome: Answered) -> dict[str, Any] | None:
    """The reply keys beyond Clipper's: ``model`` (the version whose output is the
    answer), and for policies that may query several models ``models`` (those that
    answered), ``confidence`` and ``missing`` (those that did not answer in time)."""
    fields: dict[str, Any] = {}
    if outcome.model is not None:
        fields["model"] = outcome.model
    if outcome.models is not None:
        fields["models"] = outcome.models
    if outcome.confidence is not None:
        fields["confidence"] = round(outcome.confidence, 6)
    if outcome.missing:
        fields["missing"] = outcome.missing
    return fields or None


def format_batch_reply(replies: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The reply to an ``input_batch`` request: ``{"batch_predictions": [...]}``."""
    return {"batch_predictions": list(replies)}
