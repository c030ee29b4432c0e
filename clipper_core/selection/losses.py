"""How a label scores a model's output: :func:`loss`, and per-model loss figures.

Clipper's models answer strings (``"1"``, ``"0.25"``) and its ``/update`` takes a
number, so a label is compared with what an output *means*, not with its JSON
type.  The output is first read with :func:`~clipper_core.selection.base.split_output`
(``{"label": L, ...}`` and ``[L, confidence]`` score their ``L``); then the first
rule that applies decides (ŷ the output, y the label, s ``loss_scale``):

1. a boolean on either side, against a boolean, 0/1 or ``"true"``/``"false"``:
   0 if equal, else 1;
2. numbers, or strings that spell numbers (a one-element numeric array counts as
   its number): integers on both sides are class ids, 0 if equal, else 1;
   otherwise ``min(1, |ŷ - y| / s)``; an output that is not finite (NaN, an
   infinity, or an array holding one) against a finite number or array of
   numbers scores 1;
3. arrays of numbers (strings that spell numbers count): the mean ``|ŷ - y| / s``,
   capped at 1; 1 when the shapes differ;
4. two strings: 0 if equal, else 1;
5. two values of the same other JSON type (objects, arrays): 0 if equal, else 1.

Any other pair cannot be compared (a number against ``"cat"``, a number against
an array of several numbers, a string against a number): :func:`loss` raises
:class:`~clipper_core.errors.BadInput` naming both types, and ``POST /update``
answers 400 without learning anything, rather than scoring every model alike.
``docs/selection.md`` has the rules as a table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clipper_core.errors import BadInput
from clipper_core.selection.base import State, split_output, with_unlinked

__all__ = [
    "describe_value",
    "incomparable",
    "loss",
    "loss_stats",
    "mean_losses",
    "score",
]

_BOOL_WORDS = {"true": True, "false": False}


def _number(v: Any) -> int | float | None:
    """``v`` as a Python number when it is one or a string that spells one.

    Integers (and integer literals) stay ``int``, so class ids compare exactly.
    """
    if isinstance(v, bool | np.bool_):
        return None
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, str) and 0 < len(v) <= 64:
        text = v.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            f = float(text)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def _numbers(v: Any) -> np.ndarray[Any, Any] | None:
    """``v`` as a float array when it is a numeric array or a non-empty flat list of
    numbers (strings that spell numbers included)."""
    if isinstance(v, np.ndarray):
        return v.astype(np.float64) if v.dtype.kind in "iuf" else None
    if not isinstance(v, list | tuple) or not v or any(e is True or e is False for e in v):
        return None
    try:  # numpy reads a whole list at once: numbers, and strings that spell them
        arr = np.asarray(v)
        if arr.ndim != 1 or arr.dtype.kind not in "iufU":
            return None
        arr = arr.astype(np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    # Each element: a sum of large finite numbers overflows.
    return arr if bool(np.isfinite(arr).all()) else None


def _not_finite(v: Any) -> bool:
    """Whether ``v`` is a number that is not finite (NaN, an infinity, or a string
    that spells one) or an array of numbers holding one."""
    if isinstance(v, bool | np.bool_):
        return False
    if isinstance(v, float | np.floating):
        return not math.isfinite(float(v))
    if isinstance(v, str):
        if not 0 < len(v) <= 64:
            return False
        try:
            return not math.isfinite(float(v.strip()))
        except ValueError:
            return False
    if isinstance(v, np.ndarray):
        return v.dtype.kind == "f" and not bool(np.isfinite(v).all())
    # A list as _numbers reads one: flat, numbers or strings that spell them.
    if not isinstance(v, list | tuple) or not v or any(e is True or e is False for e in v):
        return False
    try:
        arr = np.asarray(v)
        if arr.ndim != 1 or arr.dtype.kind not in "fU":
            return False
        return not bool(np.isfinite(arr.astype(np.float64)).all())
    except (TypeError, ValueError, OverflowError):
        return False


def _boolean(v: Any) -> bool | None:
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[v.strip().lower()]
    n = _number(v)
    if n is not None and n in (0, 1):
        return bool(n)
    return None


def _capped(diff: float, scale: float) -> float:
    return 1.0 if not math.isfinite(diff) else min(1.0, diff / scale)


def score(y_hat: Any, y_true: Any, scale: float = 1.0) -> float | None:
    """The loss of output ``y_hat`` against label ``y_true`` in ``[0, 1]``, or None
    when the two cannot be compared (the rules: the module docstring)."""
    label = split_output(y_hat)[0]
    if isinstance(label, bool | np.bool_) or isinstance(y_true, bool | np.bool_):
        a, b = _boolean(label), _boolean(y_true)
        if a is None or b is None:
            return None
        return 0.0 if a == b else 1.0
    a_num, b_num = _number(label), _number(y_true)
    # A NaN (or an infinity) against a finite number is simply wrong: refusing the
    # label would shield that model from its loss and stop every other one learning.
    if (b_num is not None or _numbers(y_true) is not None) and _not_finite(label):
        return 1.0
    arr_a = _numbers(label) if a_num is None else None
    arr_b = _numbers(y_true) if b_num is None else None
    # A one-element array against a number: the number it holds.
    if a_num is None and b_num is not None and arr_a is not None and arr_a.size == 1:
        a_num = float(arr_a.reshape(-1)[0])
    if b_num is None and a_num is not None and arr_b is not None and arr_b.size == 1:
        b_num = float(arr_b.reshape(-1)[0])
    if a_num is not None and b_num is not None:
        if isinstance(a_num, int) and isinstance(b_num, int):
            return 0.0 if a_num == b_num else 1.0
        return _capped(abs(float(a_num) - float(b_num)), scale)
    if arr_a is not None and arr_b is not None:
        if arr_a.shape != arr_b.shape:
            return 1.0
        with np.errstate(over="ignore"):  # an overflow is a difference past any scale
            mean = float(np.abs(arr_a - arr_b).sum()) / arr_a.size if arr_a.size else 0.0
        return _capped(mean, scale)
    if isinstance(label, str) and isinstance(y_true, str):
        return 0.0 if label == y_true else 1.0
    if a_num is None and b_num is None and arr_a is None and arr_b is None:
        kinds = (type(_plain(label)), type(_plain(y_true)))
        if kinds[0] is kinds[1] and not isinstance(label, str):
            try:
                return 0.0 if bool(_plain(label) == _plain(y_true)) else 1.0
            except (TypeError, ValueError):
                return None
    return None


def _plain(v: Any) -> Any:
    # JSON's view: a tuple is an array, like a list.
    return list(v) if isinstance(v, tuple) else v


def loss(y_hat: Any, y_true: Any, scale: float = 1.0) -> float:
    """A model output's loss against a label, in ``[0, 1]`` (rules: module docstring).

    Raises:
        BadInput: The label cannot be compared with the output (both types named).
    """
    value = score(y_hat, y_true, scale)
    if value is None:
        raise BadInput(
            f"the label {_short(y_true)} ({describe_value(y_true)}) cannot be compared with"
            f" the output {_short(split_output(y_hat)[0])}"
            f" ({describe_value(split_output(y_hat)[0])})"
        )
    return value


def describe_value(v: Any) -> str:
    """What a label or output is, in the words of the loss rules."""
    if v is None:
        return "null"
    if isinstance(v, bool | np.bool_):
        return "a boolean"
    if isinstance(v, str):
        return "a string that is a number" if _number(v) is not None else "a string"
    if _number(v) is not None:
        return "a number"
    if isinstance(v, float | np.floating):
        return "a number that is not finite"
    arr = _numbers(v)
    if arr is not None:
        shape = "x".join(str(n) for n in arr.shape)
        return f"an array of {shape} numbers"
    if isinstance(v, list | tuple | np.ndarray):
        return "an array that is not all numbers"
    if isinstance(v, Mapping):
        return "an object"
    return f"a {type(v).__name__}"


def _short(v: Any, limit: int = 40) -> str:
    text = repr(v.tolist() if isinstance(v, np.ndarray) else v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def incomparable(y_true: Any, outputs: Mapping[str, Any]) -> str | None:
    """Why ``y_true`` cannot score one of ``outputs`` (naming the model and both
    types), or None when every output can be scored."""
    for name, y in outputs.items():
        if score(y, y_true) is None:
            out = split_output(y)[0]
            return (
                f"the label {_short(y_true)} ({describe_value(y_true)}) cannot be compared"
                f" with the output of {name}, {_short(out)} ({describe_value(out)})"
            )
    return None


# -- per-model loss statistics (ε-greedy, UCB1, and reporting) ------------------------


def loss_stats(
    models: Sequence[str],
    state: State,
    y_true: Any,
    outputs: Mapping[str, Any],
    *,
    scale: float,
    discount: float = 1.0,
) -> State:
    """A new ``{"loss": {m: sum}, "count": {m: n}}`` after one label.

    With ``discount`` < 1 every model's sums shrink by that factor per label
    first, so that recent labels weigh more (a discounted mean: the policy follows
    a model that degrades or improves).  Models not linked now keep their figures.
    """
    old_loss = state.get("loss", {})
    old_count = state.get("count", {})
    losses = {m: float(old_loss.get(m, 0.0)) * discount for m in models}
    counts = {m: float(old_count.get(m, 0.0)) * discount for m in models}
    for m, y in outputs.items():
        if m in losses:
            losses[m] += loss(y, y_true, scale)
            counts[m] += 1.0
    return {
        **state,
        "loss": with_unlinked(models, old_loss, losses),
        "count": with_unlinked(models, old_count, counts),
        "updates": int(state.get("updates", 0)) + 1,
    }


def mean_losses(models: Sequence[str], state: State) -> dict[str, float | None]:
    """Each model's mean loss so far, None when it has no label yet."""
    losses = state.get("loss", {})
    counts = state.get("count", {})
    out: dict[str, float | None] = {}
    for m in models:
        n = float(counts.get(m, 0.0))
        out[m] = float(losses.get(m, 0.0)) / n if n > 1e-12 else None
    return out
