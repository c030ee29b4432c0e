"""The checks every stored record passes on creation: names, integers, input
types, JSON values, and building a record from its dict form."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any, Self

from clipper_core.errors import BadInput

__all__ = [
    "INPUT_TYPES",
    "MAX_SLO_MICROS",
    "DictRecord",
    "check_input_type",
    "check_int",
    "check_name",
    "json_copy",
    "within_slo_bound",
]

INPUT_TYPES = frozenset({"ints", "floats", "doubles", "strings", "bytes"})

#: The longest latency objective of an application or a pipeline: a day.  An
#: objective is a timer; past a day it is a typo, and past 2**63 - 1 SQLite's
#: INTEGER cannot even store it.
MAX_SLO_MICROS = 86_400_000_000

# Names appear in URL paths (/<app>/predict) and in "name:version:replica" ids, so
# they may not contain '/' or ':'.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_name(what: str, value: object) -> None:
    if not isinstance(value, str) or _NAME_RE.fullmatch(value) is None:
        raise BadInput(
            f"invalid {what} {value!r}: use 1-128 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )


def check_int(what: str, value: object, minimum: int, maximum: int | None = None) -> None:
    # bool is an int subclass; True as a replica count is a caller bug.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise BadInput(f"{what} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        got = f"{value!r}" if value < 10**30 else f"a {len(str(value))}-digit number"
        raise BadInput(f"{what} must be at most {maximum:,}, got {got}")


def check_input_type(value: object) -> None:
    if not isinstance(value, str) or value not in INPUT_TYPES:
        raise BadInput(f"unknown input type {value!r}; expected one of {sorted(INPUT_TYPES)}")


def within_slo_bound(data: Mapping[str, Any]) -> dict[str, Any]:
    """A stored app or pipeline (dict form) with its ``slo_micros`` brought within
    :data:`MAX_SLO_MICROS`: one written before the bound existed must not stop
    every read of the store (and so the server's start)."""
    d = dict(data)
    if type(d.get("slo_micros")) is int and d["slo_micros"] > MAX_SLO_MICROS:
        d["slo_micros"] = MAX_SLO_MICROS
    return d


def json_copy(what: str, value: Any) -> Any:
    """A deep copy through JSON, which also proves that ``value`` can be stored."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise BadInput(f"{what} is not JSON-serialisable: {exc}") from None


class DictRecord:
    """The dict form of a frozen record dataclass (its subclasses)."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (a deep copy) that :meth:`from_dict` reads back."""
        out: dict[str, Any] = asdict(self)  # type: ignore[call-overload]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Build a record from :meth:`to_dict`'s output.

        Raises:
            BadInput: A field is missing, unknown or invalid.
        """
        if not isinstance(data, Mapping):
            raise BadInput(f"{cls.__name__} must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInput(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:  # a missing required field
            raise BadInput(f"invalid {cls.__name__}: {exc}") from None
