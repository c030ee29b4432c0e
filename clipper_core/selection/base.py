"""The interface every selection policy implements, and the arithmetic they share.

A policy decides which of an application's linked models answer a query, how their
outputs become one answer, and how a label fed back through ``POST /<app>/update``
changes what it will choose next.  It is three functions of a JSON-serialisable
*state* (one per (application, user id)), in the shape of Clipper's paper:

* ``select(state, x) -> [model, ...]``: the models to query for input ``x``;
* ``combine(state, x, {model: y}) -> (y, confidence)``: one answer from the outputs
  that arrived (the data plane lowers the confidence when some selected model did
  not answer within the latency objective);
* ``observe(state, x, y_true, {model: y}) -> state``: a *new* state after the label
  ``y_true`` (the given state is never modified).

A policy that draws its models at random and weighs a label by the chance the
model had (Exp3) also overrides ``draw``, which reports those chances, and
``observe_drawn``: the data plane keeps the chances with the selection and hands
them back with the label, whatever the state has become meanwhile.

Policies do not touch the network or the store: the data plane calls them, so they
are plain functions of their arguments and of the policy's seeded ``random.Random``.

Output convention (what ``combine`` and the losses read from a model's output):

* ``{"label": L, "confidence": c, ...}``: label ``L`` with confidence ``c``;
* ``[L, c]`` (a two-element list or tuple): label ``L`` (a string, an integer or a
  boolean) with confidence ``c`` (a float in ``[0, 1]``);
* anything else is the label itself, and its confidence is unknown (1.0 where a
  policy needs a number).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from clipper_core.errors import BadInput

#: A policy's state: JSON-serialisable (it is persisted in the state store).
State = dict[str, Any]
#: The chance each drawn model had of being drawn (``SelectionPolicy.draw``).
Odds = Mapping[str, float]

#: What ``combine`` does with the outputs: average numbers, vote on labels, or
#: choose by the outputs' types (``"auto"``).
COMBINE_MODES = ("auto", "mean", "vote")


class SelectionPolicy:
    """Base class of the selection policies; subclasses register by name.

    An instance is bound to the application's linked models (in link order) and to
    its validated configuration; it holds no learned state of its own, so the data
    plane can rebuild it whenever the links change.

    Args:
        models: The names of the linked models (the arms).
        config: The policy's options; unknown keys and bad values raise
            :class:`BadInput`.  Missing keys take the class's :attr:`defaults`.
        rng: The random source (``random.Random(config["seed"])`` when omitted).
    """

    #: The name applications use (``register_application(..., policy=name)``).
    name: ClassVar[str] = ""
    #: Whether one query can go to more than one model (ensembles, cascades).
    multi_model: ClassVar[bool] = False
    #: Every configuration key the policy accepts, with its default.
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(
        self,
        models: Sequence[str],
        config: Mapping[str, Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.models: tuple[str, ...] = tuple(models)
        self.config: dict[str, Any] = self.validate_config(config or {})
        seed = self.config.get("seed")
        self.rng = rng if rng is not None else random.Random(seed)

    # -- configuration ------------------------------------------------------------

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """The configuration with defaults filled in.

        Raises:
            BadInput: An unknown key or an invalid value (the message names it).
        """
        if not isinstance(config, Mapping):
            raise BadInput(f"policy_config must be an object, got {type(config).__name__}")
        unknown = sorted(set(config) - set(cls.defaults))
        if unknown:
            known = ", ".join(sorted(cls.defaults)) or "none"
            raise BadInput(
                f"policy {cls.name!r} has no option(s) {', '.join(map(repr, unknown))};"
                f" its options: {known}"
            )
        merged = {**cls.defaults, **config}
        cls.check_config(merged)
        return merged

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        """Check (and normalise in place) a merged configuration; raise BadInput."""
        if "seed" in config and config["seed"] is not None:
            if isinstance(config["seed"], bool) or not isinstance(config["seed"], int):
                raise BadInput(f"policy option 'seed' must be an integer, got {config['seed']!r}")

    # -- the interface -------------------------------------------------------------

    def initial_state(self) -> State:
        """The state of a user (and the app) before any feedback."""
        return {}

    def select(self, state: State, x: Any) -> list[str]:
        """The models to query for ``x``, in order."""
        raise NotImplementedError

    def combine(self, state: State, x: Any, outputs: Mapping[str, Any]) -> tuple[Any, float]:
        """One answer and its confidence in ``[0, 1]`` from the outputs that arrived."""
        raise NotImplementedError

    def observe(self, state: State, x: Any, y_true: Any, outputs: Mapping[str, Any]) -> State:
        """The state after the label ``y_true``; ``outputs`` are the models' answers
        to ``x`` (those the policy selected for it, when known)."""
        return state

    def draw(self, state: State, x: Any) -> tuple[list[str], dict[str, float]]:
        """``select``, and the chance each chosen model had of being chosen, for a
        policy that weighs a label by it; {} when the choice is not weighed."""
        return self.select(state, x), {}

    def observe_drawn(
        self, state: State, x: Any, y_true: Any, outputs: Mapping[str, Any], odds: Odds
    ) -> State:
        """``observe``, given what ``draw`` reported when it chose the models of
        ``outputs`` ({} when not known); only Exp3-like policies read it."""
        return self.observe(state, x, y_true, outputs)

    # -- optional hooks ------------------------------------------------------------

    def escalate(
        self, state: State, x: Any, outputs: Mapping[str, Any], queried: Sequence[str]
    ) -> list[str]:
        """More models to query once ``outputs`` arrived (cascades); [] when done.

        ``queried`` lists every model asked so far, including those that failed.
        """
        return []

    def primary(self, state: State, outputs: Mapping[str, Any]) -> str | None:
        """The model whose output is the answer, when one is (the reply's ``model``)."""
        if len(outputs) == 1:
            return next(iter(outputs))
        return None

    def describe(self, state: State) -> dict[str, Any]:
        """Derived figures worth showing (probabilities, mean losses...)."""
        return {}


# -- option checks ----------------------------------------------------------------


def check_number(
    config: dict[str, Any],
    key: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """Validate ``config[key]`` as a finite number in range; store it as a float."""
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadInput(f"policy option {key!r} must be a number, got {value!r}")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise BadInput(f"policy option {key!r} must be {bound}, got {value:g}")
    if high is not None and value > high:
        raise BadInput(f"policy option {key!r} must be <= {high:g}, got {value:g}")
    config[key] = value
    return value


def check_combine_mode(config: dict[str, Any]) -> None:
    if config.get("combine") not in COMBINE_MODES:
        raise BadInput(
            f"policy option 'combine' must be one of {', '.join(COMBINE_MODES)},"
            f" got {config.get('combine')!r}"
        )


# -- outputs ------------------------------------------------------------------------


def _is_label_scalar(v: Any) -> bool:
    return isinstance(v, str | bool | int | np.integer | np.bool_)


def split_output(y: Any) -> tuple[Any, float | None]:
    """A model output's label and confidence (None when it carries none).

    See the module docstring for the convention.
    """
    if isinstance(y, Mapping) and "label" in y:
        return y["label"], _confidence(y.get("confidence"))
    if (
        isinstance(y, list | tuple)
        and len(y) == 2
        and _is_label_scalar(y[0])
        and isinstance(y[1], float | np.floating)
        and 0.0 <= float(y[1]) <= 1.0
    ):
        return y[0], float(y[1])
    return y, None


def _confidence(c: Any) -> float | None:
    if isinstance(c, bool) or not isinstance(c, int | float | np.integer | np.floating):
        return None
    value = float(c)
    if not math.isfinite(value):
        return None
    return min(max(value, 0.0), 1.0)


def confidence_of(y: Any, default: float = 1.0) -> float:
    """The confidence a model output carries, or ``default``."""
    conf = split_output(y)[1]
    return default if conf is None else conf


_REALS = (int, float, np.integer, np.floating)  # a tuple: isinstance is fastest on one
_BOOLS = (bool, np.bool_)


def _is_real(v: Any) -> bool:
    return isinstance(v, _REALS) and not isinstance(v, _BOOLS)


def _is_float(v: Any) -> bool:
    return isinstance(v, float | np.floating)


def _numeric_array(v: Any) -> np.ndarray[Any, Any] | None:
    """``v`` as a float array when it is a numeric array or a list of numbers."""
    if isinstance(v, np.ndarray):
        return v.astype(np.float64) if v.dtype.kind in "iuf" else None
    if isinstance(v, list | tuple) and v and all(_is_real(e) for e in v):
        return np.asarray(v, dtype=np.float64)
    return None


def _vote_key(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return ("ndarray", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list | tuple):
        return tuple(_vote_key(e) for e in v)
    if isinstance(v, dict):
        return tuple(sorted((str(k), _vote_key(e)) for k, e in v.items()))
    try:
        hash(v)
    except TypeError:
        return repr(v)
    return v


def _averageable(labels: Sequence[Any]) -> bool:
    """Floats and numeric arrays of one shape average; ints, strings, bools vote."""
    if all(_is_float(v) for v in labels):
        return True
    arrays = [_numeric_array(v) for v in labels]
    if any(a is None for a in arrays):
        return False
    shapes = {a.shape for a in arrays if a is not None}
    return len(shapes) == 1 and not all(_is_label_scalar(v) for v in labels)


def combine_outputs(
    outputs: Sequence[Any],
    weights: Sequence[float] | None = None,
    *,
    mode: str = "auto",
    tolerance: float = 0.1,
) -> tuple[Any, float]:
    """Combine model outputs into one answer with a confidence.

    Averaging (``mode="mean"``, or ``"auto"`` when every label is a float or all are
    numeric arrays of one shape) returns the weighted mean; its confidence is the
    weight share of the outputs within ``tolerance · max(1, |mean|)`` of it.  Voting
    returns the label with the most weight (ties go to the earliest output); its
    confidence is that label's weight share.  Labels are read with
    :func:`split_output`, so the answer is a plain label.

    Raises:
        ValueError: No outputs.
    """
    if not outputs:
        raise ValueError("nothing to combine")
    w = [1.0] * len(outputs) if weights is None else [max(float(x), 0.0) for x in weights]
    total = sum(w)
    if total <= 0:
        w = [1.0] * len(outputs)
        total = float(len(outputs))
    labels = [split_output(y)[0] for y in outputs]
    use_mean = mode == "mean" or (mode == "auto" and _averageable(labels))
    if use_mean:
        arrays = [np.asarray(float(v)) if _is_real(v) else _numeric_array(v) for v in labels]
        present = [a for a in arrays if a is not None]
        if len(present) == len(arrays) and len({a.shape for a in present}) == 1:
            stacked = np.stack(present)
            mean = np.tensordot(np.asarray(w) / total, stacked, axes=1)
            tol = tolerance * max(1.0, float(np.max(np.abs(mean))) if mean.size else 1.0)
            close = sum(
                wi
                for wi, a in zip(w, stacked, strict=True)
                if float(np.mean(np.abs(a - mean)) if a.size else 0.0) <= tol
            )
            if mean.ndim == 0:
                return float(mean), close / total
            out: Any = mean.tolist() if not isinstance(labels[0], np.ndarray) else mean
            return out, close / total
    tally: dict[Any, float] = {}
    first: dict[Any, Any] = {}
    for label, wi in zip(labels, w, strict=True):
        key = _vote_key(label)
        tally[key] = tally.get(key, 0.0) + wi
        first.setdefault(key, label)
    best = max(tally, key=lambda k: tally[k])  # max keeps the first of equal weights
    return first[best], tally[best] / total


# -- weights (Exp3, Exp4) ----------------------------------------------------------


def normalised_weights(
    models: Sequence[str], weights: Mapping[str, Any], min_weight: float
) -> dict[str, float]:
    """Weights scaled so that the largest is 1, each at least ``min_weight``.

    A model without a weight (newly linked) starts at 1.  The floor keeps every
    model within reach, so that the policy can move back to a model that became
    better again (the weights of a model that lost for long would otherwise need
    as long to recover).
    """
    raw = {}
    for m in models:
        v = weights.get(m, 1.0)
        raw[m] = float(v) if _is_real(v) and math.isfinite(float(v)) and v >= 0 else 1.0
    top = max(raw.values(), default=0.0)
    if top <= 0:
        return dict.fromkeys(models, 1.0)
    return {m: max(v / top, min_weight) for m, v in raw.items()}


def with_unlinked(models: Sequence[str], old: Any, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` (the linked models' entries) plus ``old``'s entries for models not
    linked now, unchanged: they take no part in the choice while unlinked, and a
    model linked again comes back with what was learned about it."""
    if not isinstance(old, Mapping):
        return new
    linked = set(models)
    return {**new, **{m: v for m, v in old.items() if m not in linked}}


def reweighted(
    models: Sequence[str],
    old: Any,
    weights: Mapping[str, float],
    penalties: Mapping[str, float],
    min_weight: float,
) -> dict[str, Any]:
    """The weights to store after a label: each of ``weights`` (the linked
    models') times ``exp(-penalty)``, scaled so the largest is 1 and floored at
    ``min_weight``, with ``old``'s entries of models not linked now.

    The products are worked out on logarithms relative to the largest: with a
    large eta ``exp(-penalty)`` underflows to 0 for every model, and their order
    would be lost.
    """
    logs = {m: math.log(w) - penalties.get(m, 0.0) for m, w in weights.items() if w > 0}
    top = max(logs.values(), default=-math.inf)
    scaled = {
        m: math.exp(logs[m] - top) if m in logs and math.isfinite(top) else 0.0 for m in weights
    }
    return with_unlinked(models, old, normalised_weights(models, scaled, min_weight))


def forget(weights: Mapping[str, float], discount: float) -> dict[str, float]:
    """Weights raised to the power ``discount`` (in (0, 1]): their logarithms shrink
    toward 0, the weight of the largest, so old losses fade geometrically."""
    if discount >= 1.0:
        return dict(weights)
    return {m: w**discount for m, w in weights.items()}


def probabilities(weights: Mapping[str, float]) -> dict[str, float]:
    """Weights divided by their sum."""
    total = sum(weights.values())
    if total <= 0:
        n = len(weights)
        return dict.fromkeys(weights, 1.0 / n) if n else {}
    return {m: w / total for m, w in weights.items()}
