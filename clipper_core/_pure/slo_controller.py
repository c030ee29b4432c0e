"""Pure-Python twin of ``clipper_core._ext.slo_controller``: the executable spec.

``SloController`` picks the largest batch size whose latency still meets a latency
objective (SLO), learning from the latencies of the batches the server ran.  The
Cython extension must behave exactly like this module, observation for
observation; the tests feed both the same inputs and compare their trajectories.

Modes:

``aimd``
    Clipper's additive-increase / multiplicative-decrease rule.  After a batch of
    latency ``L`` against the SLO ``S`` with margin ``e = tolerance * S``:
    ``L < S - e`` grows the batch size by ``additive_increase``; ``S - e <= L < S``
    keeps it; ``L >= S`` shrinks it to ``max(floor(batch_size *
    multiplicative_decrease), 1)``.  The rule acts on the controller's own batch
    size, whatever the size of the observed batch (as in Clipper).

``quantile``
    Fits the ``quantile``-th latency as a line ``L_q(n) = a * n + b`` of the batch
    size ``n`` over a sliding window of the last ``window`` observations, every
    ``refit_every`` observations, and serves ``ceil((S - b) / a) - 1``: the largest
    size whose fitted quantile is under the SLO (a latency at the SLO is a miss;
    ``max_batch_size`` when ``a <= 0``), but never more than twice the largest
    size in the window, since a line is only trusted near its data (so a flat
    latency reaches ``max_batch_size`` by doubling, one refit at a time, and a
    fit skewed by stale points cannot jump far).

    The fit is a *location-shift quantile regression*: an ordinary least-squares
    line through all the points of the window gives the slope ``a`` and a mean
    intercept, and ``b`` is that intercept plus the empirical ``quantile`` of the
    residuals (the ``ceil(quantile * m)``-th smallest of the ``m`` residuals).  It
    is exact when the noise around the line does not depend on the batch size, and
    it beats a per-size quantile when some sizes were seen only a few times: the
    slope uses every point and the quantile pools every residual.

    Until the window holds two distinct batch sizes there is nothing to fit, so the
    controller explores with the AIMD rule (also before the first fit).  Between
    refits it holds the fitted size, except that any SLO miss shrinks it at once
    as AIMD would.

    One slow batch must not collapse the size: a residual that reaches the SLO
    is left out of the fit; the residual quantile is never the largest residual;
    a refit lowers the size by one multiplicative-decrease step at most; a miss
    at a size the fit called safe drops the fit, and a second one before the next
    refit empties the window to that newest point (the reasons, and what each
    rule fixed: ``docs/benchmarks/controllers.md``).  :meth:`record` adds a point
    to the window without a step.

``fixed``
    Always ``fixed_batch_size`` (by default ``max_batch_size``).
"""

from __future__ import annotations

import math
import operator
from collections import deque
from collections.abc import Sequence
from typing import Any, SupportsFloat, SupportsIndex

__all__ = ["SloController"]

_MODES = ("aimd", "quantile", "fixed")
_C_INT_MAX = 2**31 - 1
#: The largest sliding window accepted (the extension keeps 20 bytes a slot).
MAX_WINDOW = 1 << 20
_FLOAT_MAX = 1.7976931348623157e308


def _as_float(value: object, name: str) -> float:
    # Cython's ``double`` arguments take what ``float()`` takes except strings.
    if isinstance(value, float):
        return value
    if isinstance(value, (str, bytes, bytearray)) or not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a real number, not {type(value).__name__}")
    return float(value)


def _as_c_int(value: SupportsIndex, name: str) -> int:
    # Cython's ``int`` arguments: anything with __index__ that fits a C int.
    n = operator.index(value)
    if not -_C_INT_MAX - 1 <= n <= _C_INT_MAX:
        raise OverflowError(f"{name} is too large for a C int")
    return n


def _batch_args(batch_size: SupportsIndex, latency: SupportsFloat) -> tuple[int, float]:
    # What the extension's ``int batch_size, double latency`` take, checked.
    n = batch_size if type(batch_size) is int else operator.index(batch_size)
    lat = latency if type(latency) is float else _as_float(latency, "latency")
    if not 1 <= n <= _C_INT_MAX:
        if n > _C_INT_MAX or n < -_C_INT_MAX - 1:
            raise OverflowError("batch_size is too large for a C int")
        raise ValueError(f"batch_size must be >= 1, got {n}")
    if not 0.0 <= lat <= _FLOAT_MAX:
        raise ValueError(f"latency must be a finite number of seconds >= 0, got {lat!r}")
    return n, lat


class SloController:
    """Chooses the largest batch size that meets a latency SLO.

    Args:
        slo: The latency objective of one batch, in seconds (finite, > 0).
        mode: ``"aimd"``, ``"quantile"`` or ``"fixed"`` (see the module docstring).
        max_batch_size: Upper bound of :attr:`batch_size` (>= 1).
        initial_batch_size: Starting batch size, in ``[1, max_batch_size]``.
        additive_increase: AIMD growth step (>= 1).
        multiplicative_decrease: AIMD shrink factor, in ``(0, 1)``.
        tolerance: AIMD hold band below the SLO, as a fraction of it, in ``[0, 1)``.
        quantile: The latency quantile that must meet the SLO, in ``(0, 1)``.
        window: Observations kept for the quantile fit, in ``[2, 2**20]``.
        refit_every: Observations between two quantile fits (>= 1).
        fixed_batch_size: The batch size of the ``fixed`` mode, in
            ``[1, max_batch_size]``; only allowed with ``mode="fixed"``.

    Raises:
        ValueError: A knob is out of range or the mode is unknown.
        TypeError: A knob has the wrong type.
    """

    __slots__ = tuple(
        """
        _a _additive_increase _b _batch_size _cap _doubt _fitted _hold_from
        _initial_batch_size _last_n _max_batch_size _mode _multiplicative_decrease
        _observations _quantile _refit_every _run _since_refit _slo _tolerance _window
        _window_size
        """.split()
    )

    _mode: str
    _slo: float
    _max_batch_size: int
    _batch_size: int
    _initial_batch_size: int
    _additive_increase: int
    _multiplicative_decrease: float
    _tolerance: float
    _hold_from: float
    _quantile: float
    _refit_every: int
    _observations: int
    _window: deque[tuple[int, float]]
    _window_size: int
    _last_n: int
    _run: int
    _since_refit: int
    _fitted: bool
    _doubt: bool
    _a: float
    _b: float
    _cap: int

    def __init__(
        self,
        slo: SupportsFloat,
        *,
        mode: str = "aimd",
        max_batch_size: SupportsIndex = 256,
        initial_batch_size: SupportsIndex = 1,
        additive_increase: SupportsIndex = 2,
        multiplicative_decrease: SupportsFloat = 0.9,
        tolerance: SupportsFloat = 0.1,
        quantile: SupportsFloat = 0.99,
        window: SupportsIndex = 512,
        refit_every: SupportsIndex = 16,
        fixed_batch_size: SupportsIndex | None = None,
    ) -> None:
        slo_s = _as_float(slo, "slo")
        if not isinstance(mode, str):
            raise TypeError(f"mode must be a str, not {type(mode).__name__}")
        if mode not in _MODES:
            raise ValueError(f"unknown mode {mode!r}: expected 'aimd', 'quantile' or 'fixed'")
        max_bs = _as_c_int(max_batch_size, "max_batch_size")
        initial = _as_c_int(initial_batch_size, "initial_batch_size")
        ai = _as_c_int(additive_increase, "additive_increase")
        md = _as_float(multiplicative_decrease, "multiplicative_decrease")
        tol = _as_float(tolerance, "tolerance")
        q = _as_float(quantile, "quantile")
        win = _as_c_int(window, "window")
        refit = _as_c_int(refit_every, "refit_every")
        fixed = (
            None if fixed_batch_size is None else _as_c_int(fixed_batch_size, "fixed_batch_size")
        )

        _check_slo(slo_s)
        if max_bs < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_bs}")
        if not 1 <= initial <= max_bs:
            raise ValueError(
                f"initial_batch_size must be in [1, max_batch_size={max_bs}], got {initial}"
            )
        if ai < 1:
            raise ValueError(f"additive_increase must be >= 1, got {ai}")
        if not 0.0 < md < 1.0:
            raise ValueError(f"multiplicative_decrease must be in (0, 1), got {md!r}")
        if not 0.0 <= tol < 1.0:
            raise ValueError(f"tolerance must be in [0, 1), got {tol!r}")
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {q!r}")
        if not 2 <= win <= MAX_WINDOW:
            raise ValueError(f"window must be in [2, {MAX_WINDOW}], got {win}")
        if refit < 1:
            raise ValueError(f"refit_every must be >= 1, got {refit}")
        if fixed is not None:
            if mode != "fixed":
                raise ValueError("fixed_batch_size is only allowed with mode='fixed'")
            if not 1 <= fixed <= max_bs:
                raise ValueError(
                    f"fixed_batch_size must be in [1, max_batch_size={max_bs}], got {fixed}"
                )

        self._mode = mode
        self._slo = slo_s
        self._max_batch_size = max_bs
        self._additive_increase = ai
        self._multiplicative_decrease = md
        self._tolerance = tol
        self._quantile = q
        self._window_size = win
        self._refit_every = refit
        if mode == "fixed":
            self._initial_batch_size = max_bs if fixed is None else fixed
        else:
            self._initial_batch_size = initial
        self._hold_from = slo_s - tol * slo_s
        self._window = deque(maxlen=win)
        self._forget()

    # -- read-only state ---------------------------------------------------------

    @property
    def slo(self) -> float:
        """The latency objective of one batch, in seconds."""
        return self._slo

    @property
    def max_batch_size(self) -> int:
        """Upper bound of :attr:`batch_size`."""
        return self._max_batch_size

    @property
    def batch_size(self) -> int:
        """The largest batch size to run now, in ``[1, max_batch_size]``."""
        return self._batch_size

    @property
    def mode(self) -> str:
        """``"aimd"``, ``"quantile"`` or ``"fixed"``."""
        return self._mode

    @property
    def observations(self) -> int:
        """Observations since construction or the last :meth:`reset`."""
        return self._observations

    # -- API ---------------------------------------------------------------------

    def observe(self, batch_size: SupportsIndex, latency: SupportsFloat) -> None:
        """Learns from one batch: ``batch_size`` inputs took ``latency`` seconds.

        Raises:
            ValueError: ``batch_size < 1``, or ``latency`` is negative, NaN or
                infinite.
        """
        n, lat = _batch_args(batch_size, latency)
        self._observations += 1
        mode = self._mode
        if mode == "aimd":
            self._aimd_step(lat)
        elif mode == "quantile":
            self._quantile_step(n, lat)

    def record(self, batch_size: SupportsIndex, latency: SupportsFloat) -> None:
        """Adds a batch to the quantile window, no step of the size (other modes
        ignore it): a fast batch below the limit says nothing of the limit, but it
        is a point of the latency line (without such points the fit's slope is
        false).  Raises as :meth:`observe`."""
        n, lat = _batch_args(batch_size, latency)
        if self._mode == "quantile":
            self._observations += 1
            self._push(n, lat)
            self._since_refit += 1
            if self._since_refit >= self._refit_every and self._run < len(self._window):
                self._refit()

    def set_slo(self, slo: SupportsFloat) -> None:
        """Changes the latency objective; a quantile fit is re-applied at once.

        Raises:
            ValueError: ``slo`` is not a finite number > 0.
        """
        slo_s = _as_float(slo, "slo")
        _check_slo(slo_s)
        self._slo = slo_s
        self._hold_from = slo_s - self._tolerance * slo_s
        if self._fitted:
            self._batch_size = self._size_from_fit()

    def reset(self) -> None:
        """Forgets every observation and fit; the batch size starts over.

        The configuration, including an SLO changed by :meth:`set_slo`, is kept.
        """
        self._forget()

    def snapshot(self) -> dict[str, Any]:
        """The state, for metrics and debugging.

        Returns:
            ``mode``, ``batch_size``, ``max_batch_size``, ``slo`` (seconds),
            ``observations``, and ``a``, ``b``: the quantile fit in use
            (``L_q(n) = a * n + b``, seconds), both ``None`` when there is none.
        """
        return {
            "mode": self._mode,
            "batch_size": self._batch_size,
            "max_batch_size": self._max_batch_size,
            "slo": self._slo,
            "observations": self._observations,
            "a": self._a if self._fitted else None,
            "b": self._b if self._fitted else None,
        }

    def __reduce__(self) -> str | tuple[Any, ...]:
        # The extension cannot be pickled (it owns C buffers); neither can the twin.
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")

    def __repr__(self) -> str:
        return (
            f"SloController(mode={self._mode!r}, slo={self._slo!r}, "
            f"batch_size={self._batch_size}, max_batch_size={self._max_batch_size})"
        )

    # -- internals -----------------------------------------------------------------

    def _forget(self) -> None:
        self._batch_size = self._initial_batch_size
        self._observations = 0
        self._window.clear()
        self._last_n = 0
        self._run = 0  # length of the trailing run of equal batch sizes in the window
        self._since_refit = 0
        self._fitted = False
        self._doubt = False  # a miss dropped the fit; no refit since
        self._a = 0.0
        self._b = 0.0
        self._cap = self._max_batch_size

    def _aimd_step(self, latency: float) -> None:
        if latency >= self._slo:
            smaller = int(self._batch_size * self._multiplicative_decrease)
            self._batch_size = smaller if smaller > 1 else 1
        elif latency < self._hold_from:
            self._grow()

    def _grow(self) -> None:
        if self._batch_size >= self._max_batch_size - self._additive_increase:
            self._batch_size = self._max_batch_size
        else:
            self._batch_size += self._additive_increase

    def _quantile_step(self, n: int, latency: float) -> None:
        self._push(n, latency)
        self._since_refit += 1
        # The window holds two distinct sizes iff its trailing run of equal
        # sizes is shorter than the window (``_run < len(window)``).
        if latency >= self._slo:
            smaller = int(self._batch_size * self._multiplicative_decrease)
            self._batch_size = smaller if smaller > 1 else 1
            if self._fitted and self._a * n + self._b <= self._slo:
                # The fit called this size safe: perhaps one slow batch, perhaps a
                # slower model.  Drop the fit; the next one, over the whole window
                # and refit_every newer batches, tells which.
                self._fitted = False
                self._since_refit = 0
                self._doubt = True
            elif self._doubt:
                # A second miss before that refit: the model slowed down.  Keep
                # only the newest observation and explore again.
                self._window.clear()
                self._run = 0
                self._push(n, latency)
                self._since_refit = 1
                self._doubt = False
        elif not self._fitted and self._run >= len(self._window):
            # One size in the window and no fit: AIMD's hold band would keep it
            # there for ever (a batch of 1 already near the SLO), and a fit needs
            # a second size.
            self._grow()
        elif not self._fitted or self._run >= len(self._window):
            self._aimd_step(latency)
        if self._since_refit >= self._refit_every and self._run < len(self._window):
            self._refit()

    def _push(self, n: int, latency: float) -> None:
        if n == self._last_n:
            if self._run < self._window_size:
                self._run += 1
        else:
            self._last_n = n
            self._run = 1
        self._window.append((n, latency))

    def _refit(self) -> None:
        window = self._window
        max_n = 0
        for n, _ in window:
            if n > max_n:
                max_n = n
        fit = _least_squares(window)
        if fit is None:
            self._drop_fit()  # latencies so large that the sums overflowed
            return
        a, b = fit
        slo = self._slo
        residuals = [lat - (a * n + b) for n, lat in window]
        if not all(r < slo for r in residuals):  # a NaN residual is left out too
            # A batch slower than its fitted latency by the whole SLO was not
            # slowed by its size (a descheduled process, a pause): left out.
            kept = [p for p, r in zip(window, residuals, strict=True) if r < slo]
            fit = _least_squares(kept) if kept else None  # all left out: no fit
            if fit is None:
                self._drop_fit()  # what is left holds a single size
                return
            a, b = fit
            residuals = [lat - (a * n + b) for n, lat in kept]
        m = len(residuals)
        residuals.sort()
        # Never the largest residual (m >= 2 here): see the module docstring.
        k = math.ceil(self._quantile * m) - 1
        k = min(max(k, 0), m - 2)
        b += residuals[k]
        if not math.isfinite(b):
            self._drop_fit()
            return
        self._a = a
        self._b = b
        self._cap = min(2 * max_n, self._max_batch_size)
        self._fitted = True
        self._doubt = False
        self._since_refit = 0
        # A refit cuts by one multiplicative-decrease step at most, but stays
        # within the extrapolation cap.
        floor = min(int(self._batch_size * self._multiplicative_decrease), self._cap)
        fitted = self._size_from_fit()
        self._batch_size = fitted if fitted >= floor else floor

    def _drop_fit(self) -> None:
        # No usable fit: explore with AIMD again from the current size.
        self._fitted = False
        self._since_refit = 0

    def _size_from_fit(self) -> int:
        if self._a <= 0.0:
            return self._cap
        # The largest n with a * n + b < S: a latency at the SLO is a miss, so a
        # size whose fitted quantile sits exactly on it is not offered.
        x = (self._slo - self._b) / self._a
        if x > self._cap:
            return self._cap
        if x > 1.0:
            return math.ceil(x) - 1
        return 1


def _least_squares(points: Sequence[tuple[int, float]]) -> tuple[float, float] | None:
    """The least-squares line ``(a, b)`` through (batch size, latency) points (at
    least one); None without two distinct sizes, or when the sums overflow."""
    m = len(points)
    sum_n = 0
    sum_l = 0.0
    for n, lat in points:
        sum_n += n
        sum_l += lat
    mean_n = float(sum_n) / m
    mean_l = sum_l / m
    sxx = 0.0
    sxy = 0.0
    for n, lat in points:
        dn = n - mean_n
        sxx += dn * dn
        sxy += dn * (lat - mean_l)
    if not sxx > 0.0:
        return None
    a = sxy / sxx
    b = mean_l - a * mean_n
    if not (math.isfinite(a) and math.isfinite(b)):
        return None
    return a, b


def _check_slo(slo: float) -> None:
    if not 0.0 < slo <= _FLOAT_MAX:
        raise ValueError(f"slo must be a finite number of seconds > 0, got {slo!r}")
