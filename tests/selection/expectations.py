"""What share of queries each learning policy should give its best model, from
the policies' own arithmetic (mean-field: expected losses in place of observed
ones), and the margin a test allows below it.

The convergence tests (in process and over real containers) assert
``share >= lower_bound(expected, n)``: the expectation less three binomial
standard deviations over the ``n`` queries measured, less :data:`MEAN_FIELD`
for what the mean-field picture leaves out (the spread of Exp3's importance
weights, ties while the estimates settle).  The runs are seeded, so a test
gives the same figure every time; the margin says how far a figure may move
when a seed or a schedule changes, and it was checked over 40 seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: Allowance for the mean-field approximation itself.
MEAN_FIELD = 0.15


def lower_bound(expected: float, n: int) -> float:
    """``expected`` less 3 binomial standard deviations over ``n`` draws and
    :data:`MEAN_FIELD`."""
    p = min(max(expected, 0.0), 1.0)
    return p - 3.0 * math.sqrt(p * (1.0 - p) / n) - MEAN_FIELD


def _effective_labels(t: float, discount: float) -> float:
    """How many labels the policy remembers after ``t``: ``t``, or the discounted
    count ``(1 - g^t) / (1 - g)``."""
    if discount >= 1.0:
        return t
    return (1.0 - discount**t) / (1.0 - discount)


def exp_weights_share(
    losses: Sequence[float],
    eta: float,
    min_weight: float,
    window: tuple[int, int],
    discount: float = 1.0,
) -> float:
    """Exp3 / Exp4 (mean field): model i's log-weight trails the best by
    ``eta * gap_i * t_eff`` (in expectation Exp3's importance-weighted update is
    ``eta * loss``, Exp4's is that exactly), capped at ``ln(1 / min_weight)`` by the
    floor; the best model's probability, averaged over the labels in ``window``."""
    best = min(losses)
    cap = math.log(1.0 / min_weight)
    total = 0.0
    for t in range(*window):
        n = _effective_labels(t, discount)
        weights = [math.exp(-min(cap, eta * (ell - best) * n)) for ell in losses]
        total += max(weights) / sum(weights)
    return total / (window[1] - window[0])


def exp4_vote_share(losses: Sequence[float]) -> float:
    """Exp4 answers with the heaviest model's label (a weighted vote over distinct
    outputs): once the expected gap is positive, the best model answers."""
    return 1.0 if sorted(losses)[0] < sorted(losses)[1] else 0.5


def epsilon_greedy_share(n_models: int, epsilon: float) -> float:
    """Greedy on the best mean, uniform with probability ε: 1 - ε (K - 1) / K."""
    return 1.0 - epsilon * (n_models - 1) / n_models


def ucb1_share(
    losses: Sequence[float],
    exploration: float,
    window: tuple[int, int],
    discount: float = 1.0,
) -> float:
    """UCB1 (mean field): pulls balance where every model's optimistic loss
    ``mean_i - sqrt(c ln N / n_i)`` is equal and the n_i add up to N (the
    remembered labels).  The best model's share of the pulls in ``window``: the
    growth of its n over the window (with a discount, its share at equilibrium)."""

    def best_count(t: float) -> float:
        n_total = _effective_labels(t, discount)
        c_log = exploration * math.log(max(n_total, 2.0))
        best = min(losses)
        # Bisection on the common score s < best: sum_i c_log / (loss_i - s)^2 = N.
        lo, hi = best - 10.0, best - 1e-9
        for _ in range(200):
            s = (lo + hi) / 2
            if sum(c_log / (ell - s) ** 2 for ell in losses) > n_total:
                hi = s
            else:
                lo = s
        s = (lo + hi) / 2
        return c_log / (best - s) ** 2

    start, end = window
    if discount < 1.0:
        return best_count(end) / _effective_labels(end, discount)
    return (best_count(end) - best_count(start)) / (end - start)
