"""``python -m bench selection``: cumulative regret of each selection policy.

A labelled stream in Clipper's shapes: K models answer ``"1"`` or ``"0"``
(strings), each right with its own probability, independently; the label is the
float 1.0 or 0.0.  Every policy runs over the same streams, in process, through
the same ``select`` / ``combine`` / ``observe`` the server calls, so thousands of
labels take seconds.  Regret at t is the loss of the answers the client got
minus the loss of the best single model *in hindsight* (the one with the fewest
mistakes over the first t labels), averaged over the seeds.

Bounds drawn next to the curves (losses in [0, 1]):

* ``exp3`` (loss-based Exp3 with a fixed eta; Bubeck & Cesa-Bianchi 2012, Thm 3.1):
  ``ln K / eta + eta K t / 2``; at the tuned ``eta = sqrt(2 ln K / (T K))`` it is
  ``sqrt(2 T K ln K)`` at T: the O(sqrt(T K ln K)) bound with constant sqrt(2).
  It is a bound on the expected (pseudo-)regret; the ``min_weight`` floor adds at
  most ``T (K - 1) min_weight`` (the tuned run uses 1e-9).
* ``exp4`` (full information, as Hedge; Cesa-Bianchi & Lugosi 2006, Thm 2.2):
  ``ln K / eta + eta t / 8`` for the weighted-average prediction; Exp4 answers
  with the weighted vote, which this bound does not strictly cover.
* ``ucb1`` (Auer, Cesa-Bianchi & Fischer 2002, Thm 1, the bonus
  ``sqrt(2 ln t / n)``, i.e. ``exploration`` = 2): ``sum_i 8 ln t / gap_i +
  (1 + pi^2 / 3) sum_i gap_i``.
* ``epsilon_greedy`` with a fixed epsilon has no sublinear bound: it pays
  ``epsilon t sum_i gap_i / K`` in expectation (drawn as its line).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Each model's probability of answering right (the best is the first).
DEFAULT_ACCURACIES = (0.8, 0.7, 0.6)


@dataclass
class PolicyRun:
    """One policy configuration of the comparison."""

    label: str
    policy: str
    config: dict[str, Any]
    bound: Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]] | None = None
    bound_name: str = ""
    curves: list[np.ndarray[Any, Any]] = field(default_factory=list)
    seconds: float = 0.0


def make_stream(
    rounds: int, accuracies: tuple[float, ...], seed: int
) -> tuple[list[dict[str, str]], list[float]]:
    """Per round, each model's output (``"1"``/``"0"``) and the float label."""
    rng = random.Random(seed)
    outputs, labels = [], []
    for _ in range(rounds):
        truth = rng.random() < 0.5
        row = {}
        for i, acc in enumerate(accuracies):
            right = rng.random() < acc
            row[f"m{i}"] = "1" if truth == right else "0"
        outputs.append(row)
        labels.append(1.0 if truth else 0.0)
    return outputs, labels


def best_in_hindsight(outputs: list[dict[str, str]], labels: list[float]) -> np.ndarray[Any, Any]:
    """At each t, the cumulative loss of the model with the fewest mistakes so far."""
    models = list(outputs[0])
    rows = zip(outputs, labels, strict=True)
    losses = np.array([[float(float(row[m]) != y) for m in models] for row, y in rows])
    return np.asarray(np.cumsum(losses, axis=0).min(axis=1))


def play(run: PolicyRun, outputs: list[dict[str, str]], labels: list[float], seed: int) -> Any:
    """The cumulative loss of the answers ``run``'s policy gives over the stream."""
    from clipper_core.selection import make_policy
    from clipper_core.selection.losses import loss

    config = dict(run.config)
    if "seed" in config:
        config["seed"] = seed
    policy = make_policy(run.policy, list(outputs[0]), config)
    state = policy.initial_state()
    paid = np.empty(len(labels))
    for t, (row, y) in enumerate(zip(outputs, labels, strict=True)):
        chosen = policy.select(state, None)
        seen = {m: row[m] for m in chosen}
        answer, _ = policy.combine(state, None, seen)
        paid[t] = loss(answer, y)
        state = policy.observe(state, None, y, seen)
    return np.cumsum(paid)


def policy_runs(k: int, rounds: int, gaps: list[float]) -> list[PolicyRun]:
    """The configurations compared: each learning policy with its defaults, and
    Exp3 / Exp4 with eta tuned for the horizon (where their bounds are tight)."""
    ln_k = math.log(k)
    eta3 = math.sqrt(2 * ln_k / (rounds * k))
    eta4 = math.sqrt(8 * ln_k / rounds)

    def exp3_bound(eta: float) -> Callable[[Any], Any]:
        return lambda t: ln_k / eta + eta * k * t / 2

    def exp4_bound(eta: float) -> Callable[[Any], Any]:
        return lambda t: ln_k / eta + eta * t / 8

    def ucb_bound(t: Any) -> Any:
        logs = np.log(np.maximum(t, 2))
        return sum(8 * logs / g + (1 + math.pi**2 / 3) * g for g in gaps if g > 0)

    def greedy_line(t: Any) -> Any:
        return 0.1 * t * sum(gaps) / k

    return [
        PolicyRun("exp3 (eta 0.01)", "exp3", {"seed": 0}, exp3_bound(0.01), "ln K/eta + eta K t/2"),
        PolicyRun(
            f"exp3 (eta {eta3:.3f}, tuned)",
            "exp3",
            {"eta": eta3, "min_weight": 1e-9, "seed": 0},
            exp3_bound(eta3),
            "sqrt(2 T K ln K) at T",
        ),
        PolicyRun("exp4 (eta 0.01)", "exp4", {}, exp4_bound(0.01), "ln K/eta + eta t/8"),
        PolicyRun(
            f"exp4 (eta {eta4:.3f}, tuned)",
            "exp4",
            {"eta": eta4, "min_weight": 1e-9},
            exp4_bound(eta4),
            "sqrt(T ln K / 2) at T",
        ),
        PolicyRun(
            "epsilon_greedy (0.1)",
            "epsilon_greedy",
            {"epsilon": 0.1, "seed": 0},
            greedy_line,
            "expected: eps t sum(gap)/K (no sublinear bound)",
        ),
        PolicyRun("ucb1 (c 2)", "ucb1", {}, ucb_bound, "sum 8 ln t/gap + (1+pi^2/3) sum gap"),
    ]


def run_regret(
    *,
    rounds: int,
    seeds: int,
    accuracies: tuple[float, ...] = DEFAULT_ACCURACIES,
    quiet: bool = False,
) -> dict[str, Any]:
    """Every policy over ``seeds`` streams of ``rounds`` labels; the report data."""
    k = len(accuracies)
    best = max(accuracies)
    gaps = [best - a for a in accuracies]
    runs = policy_runs(k, rounds, gaps)
    hindsight = []
    for seed in range(seeds):
        outputs, labels = make_stream(rounds, accuracies, seed)
        best_loss = best_in_hindsight(outputs, labels)
        hindsight.append(best_loss)
        for run in runs:
            t0 = time.perf_counter()
            run.curves.append(play(run, outputs, labels, seed) - best_loss)
            run.seconds += time.perf_counter() - t0
    t = np.arange(1, rounds + 1, dtype=float)
    step = max(1, rounds // 200)  # the curves in the report: about 200 points
    points = list(range(step - 1, rounds, step))
    rows = []
    for run in runs:
        curves = np.stack(run.curves)
        mean = curves.mean(axis=0)
        bound = run.bound(t) if run.bound is not None else None
        row = {
            "label": run.label,
            "policy": run.policy,
            "config": run.config,
            "regret_at_T": round(float(mean[-1]), 1),
            "regret_at_T_sd": round(float(curves[:, -1].std()), 1),
            "regret_per_label": round(float(mean[-1]) / rounds, 4),
            "bound_at_T": None if bound is None else round(float(bound[-1]), 1),
            "bound": run.bound_name,
            "us_per_label": round(run.seconds / (rounds * seeds) * 1e6, 1),
            "curve": {
                "t": [int(t[i]) for i in points],
                "regret": [round(float(mean[i]), 2) for i in points],
                "bound": None if bound is None else [round(float(bound[i]), 2) for i in points],
            },
        }
        rows.append(row)
        if not quiet:
            print(
                f"  {run.label:<28} regret at T={rounds}: {row['regret_at_T']:>7.1f}"
                f" (sd {row['regret_at_T_sd']:.1f}, {row['regret_per_label']:.4f}/label)"
                + (f"   bound {row['bound_at_T']:.1f}" if row["bound_at_T"] is not None else ""),
                flush=True,
            )
    return {
        "stream": {
            "rounds": rounds,
            "seeds": seeds,
            "models": k,
            "accuracies": list(accuracies),
            "outputs": 'Clipper strings "1"/"0"; labels 1.0/0.0',
            "best_in_hindsight_loss_at_T": round(float(np.mean([h[-1] for h in hindsight])), 1),
        },
        "policies": rows,
    }


def plot_regret(data: dict[str, Any], path: Path, title: str) -> Path:
    """Mean cumulative regret per policy (solid) and its bound (dashed)."""
    from bench.plots import _save, plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for i, row in enumerate(data["policies"]):
        color = f"C{i}"
        curve = row["curve"]
        ax.plot(curve["t"], curve["regret"], color=color, label=row["label"])
        if curve["bound"] is not None:
            ax.plot(curve["t"], curve["bound"], color=color, ls="--", lw=0.9, alpha=0.7)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_yscale("symlog", linthresh=10)
    lowest = min(min(row["curve"]["regret"]) for row in data["policies"])
    ax.set_ylim(bottom=min(0.0, lowest) - 1.0)
    ax.set_xlabel("labels (t)")
    ax.set_ylabel("cumulative regret vs best model in hindsight")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title + " (dashed: each policy's bound)")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
