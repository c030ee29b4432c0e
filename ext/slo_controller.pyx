"""The latency-SLO batch-size controller, in C.

``clipper_core/_pure/slo_controller.py`` is the specification: its docstring
describes the three modes and the quantile fit, and this module must behave the
same way, observation for observation (the tests compare both).  Everything on
the ``observe`` path is C arithmetic on typed fields; the quantile window is two
C ring buffers, so an observation allocates nothing.
"""

cimport cython
from cpython.long cimport PyLong_Check
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.float cimport DBL_MAX
from libc.limits cimport INT_MAX, INT_MIN
from libc.math cimport ceil, isfinite

import operator

__all__ = ["SloController"]

#: The largest sliding window accepted (its ring buffers take 20 bytes a slot).
MAX_WINDOW = 1 << 20

cdef tuple _MODE_NAMES = (None, "aimd", "quantile", "fixed")


cdef double _as_float(object value, str name) except? -1.0:
    # Same rule as the twin: what float() takes, except strings.
    if isinstance(value, float):
        return value
    if isinstance(value, (str, bytes, bytearray)) or not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a real number, not {type(value).__name__}")
    return float(value)


cdef int _as_c_int(object value, str name) except? -1:
    cdef object n = operator.index(value)
    if not INT_MIN <= n <= INT_MAX:
        raise OverflowError(f"{name} is too large for a C int")
    return n


cdef int _check_slo(double slo) except -1:
    # Written so that NaN fails too.
    if not 0.0 < slo <= DBL_MAX:
        raise ValueError(f"slo must be a finite number of seconds > 0, got {slo!r}")
    return 0


cdef double _select(double *v, int m, int k) noexcept nogil:
    """The k-th smallest of v[0:m] (0-based), reordering v (Hoare's quickselect)."""
    cdef int lo = 0
    cdef int hi = m - 1
    cdef int i, j
    cdef double pivot, tmp
    while lo < hi:
        pivot = v[lo + (hi - lo) // 2]
        i = lo
        j = hi
        while i <= j:
            while v[i] < pivot:
                i += 1
            while v[j] > pivot:
                j -= 1
            if i <= j:
                tmp = v[i]
                v[i] = v[j]
                v[j] = tmp
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return v[k]


@cython.final
cdef class SloController:
    """Chooses the largest batch size that meets a latency SLO.

    Args:
        slo: The latency objective of one batch, in seconds (finite, > 0).
        mode: ``"aimd"``, ``"quantile"`` or ``"fixed"``.
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

    def __cinit__(
        self,
        slo,
        *,
        mode="aimd",
        max_batch_size=256,
        initial_batch_size=1,
        additive_increase=2,
        multiplicative_decrease=0.9,
        tolerance=0.1,
        quantile=0.99,
        window=512,
        refit_every=16,
        fixed_batch_size=None,
    ):
        # Everything happens here rather than in __init__ so that the ring
        # buffers exist exactly once per object; until the end, _mode stays 0
        # and observe() refuses to run.
        cdef double slo_s = _as_float(slo, "slo")
        if not isinstance(mode, str):
            raise TypeError(f"mode must be a str, not {type(mode).__name__}")
        if mode not in _MODE_NAMES[1:]:
            raise ValueError(f"unknown mode {mode!r}: expected 'aimd', 'quantile' or 'fixed'")
        cdef int max_bs = _as_c_int(max_batch_size, "max_batch_size")
        cdef int initial = _as_c_int(initial_batch_size, "initial_batch_size")
        cdef int ai = _as_c_int(additive_increase, "additive_increase")
        cdef double md = _as_float(multiplicative_decrease, "multiplicative_decrease")
        cdef double tol = _as_float(tolerance, "tolerance")
        cdef double q = _as_float(quantile, "quantile")
        cdef int win = _as_c_int(window, "window")
        cdef int refit = _as_c_int(refit_every, "refit_every")
        cdef int fixed = 0
        if fixed_batch_size is not None:
            fixed = _as_c_int(fixed_batch_size, "fixed_batch_size")

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
        if fixed_batch_size is not None:
            if mode != "fixed":
                raise ValueError("fixed_batch_size is only allowed with mode='fixed'")
            if not 1 <= fixed <= max_bs:
                raise ValueError(
                    f"fixed_batch_size must be in [1, max_batch_size={max_bs}], got {fixed}"
                )

        self.slo = slo_s
        self.max_batch_size = max_bs
        self._additive_increase = ai
        self._multiplicative_decrease = md
        self._tolerance = tol
        self._quantile = q
        self._refit_every = refit
        self._hold_from = slo_s - tol * slo_s
        if mode == "fixed":
            self._initial_batch_size = max_bs if fixed_batch_size is None else fixed
        else:
            self._initial_batch_size = initial
        if mode == "quantile":
            # Only the quantile mode keeps a window.
            self._window_size = win
            self._ring_n = <int *>PyMem_Malloc(win * sizeof(int))
            self._ring_latency = <double *>PyMem_Malloc(win * sizeof(double))
            self._scratch = <double *>PyMem_Malloc(win * sizeof(double))
            if self._ring_n == NULL or self._ring_latency == NULL or self._scratch == NULL:
                raise MemoryError()  # __dealloc__ frees what was allocated
        self._forget()
        self._mode = _MODE_NAMES.index(mode)

    def __dealloc__(self):
        PyMem_Free(self._ring_n)
        PyMem_Free(self._ring_latency)
        PyMem_Free(self._scratch)

    # -- read-only state -----------------------------------------------------

    @property
    def mode(self):
        """``"aimd"``, ``"quantile"`` or ``"fixed"``."""
        return _MODE_NAMES[self._mode]

    @property
    def observations(self):
        """Observations since construction or the last :meth:`reset`."""
        return self._observations

    # -- API -----------------------------------------------------------------

    def observe(self, batch_size, double latency):
        """Learns from one batch: ``batch_size`` inputs took ``latency`` seconds.

        Raises:
            ValueError: ``batch_size < 1``, or ``latency`` is negative, NaN or
                infinite.
        """
        # An ``int`` argument would let Cython truncate a float; take only
        # integers (``__index__``), like the twin.
        if not PyLong_Check(batch_size):
            batch_size = operator.index(batch_size)
        self.observe_c(batch_size, latency)

    def record(self, batch_size, double latency):
        """Adds one batch to the quantile mode's window without a step of the
        batch size (other modes ignore it): a fast batch below the limit says
        nothing about the limit, but it is a point of the latency line.  A
        window fed only slow small batches and full ones fits a false slope.

        Raises:
            ValueError: as :meth:`observe`.
        """
        if not PyLong_Check(batch_size):
            batch_size = operator.index(batch_size)
        self._check(batch_size, latency)
        if self._mode == SLO_MODE_QUANTILE:
            self._observations += 1
            self._push(batch_size, latency)
            self._since_refit += 1
            if self._since_refit >= self._refit_every and self._run < self._count:
                self._refit()

    cdef int _check(self, int batch_size, double latency) except -1:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= latency <= DBL_MAX:
            raise ValueError(
                f"latency must be a finite number of seconds >= 0, got {latency!r}"
            )
        return 0

    cdef int observe_c(self, int batch_size, double latency) except -1:
        self._check(batch_size, latency)
        self._observations += 1
        if self._mode == SLO_MODE_AIMD:
            self._aimd_step(latency)
        elif self._mode == SLO_MODE_QUANTILE:
            self._quantile_step(batch_size, latency)
        elif self._mode != SLO_MODE_FIXED:
            raise RuntimeError("SloController was not initialised")
        return 0

    cpdef void set_slo(self, double slo) except *:
        """Changes the latency objective; a quantile fit is re-applied at once.

        Raises:
            ValueError: ``slo`` is not a finite number > 0.
        """
        _check_slo(slo)
        self.slo = slo
        self._hold_from = slo - self._tolerance * slo
        if self._fitted:
            self.batch_size = self._size_from_fit()

    cpdef void reset(self) noexcept:
        """Forgets every observation and fit; the batch size starts over.

        The configuration, including an SLO changed by :meth:`set_slo`, is kept.
        """
        self._forget()

    def snapshot(self):
        """The state, for metrics and debugging.

        Returns:
            ``mode``, ``batch_size``, ``max_batch_size``, ``slo`` (seconds),
            ``observations``, and ``a``, ``b``: the quantile fit in use
            (``L_q(n) = a * n + b``, seconds), both ``None`` when there is none.
        """
        return {
            "mode": _MODE_NAMES[self._mode],
            "batch_size": self.batch_size,
            "max_batch_size": self.max_batch_size,
            "slo": self.slo,
            "observations": self._observations,
            "a": self._a if self._fitted else None,
            "b": self._b if self._fitted else None,
        }

    def __repr__(self):
        return (
            f"SloController(mode={_MODE_NAMES[self._mode]!r}, slo={self.slo!r}, "
            f"batch_size={self.batch_size}, max_batch_size={self.max_batch_size})"
        )

    # -- internals: pure C, in the twin's order of operations -----------------

    cdef void _forget(self) noexcept:
        self.batch_size = self._initial_batch_size
        self._observations = 0
        self._head = 0
        self._count = 0
        self._last_n = 0
        self._run = 0
        self._since_refit = 0
        self._fitted = False
        self._doubt = False
        self._a = 0.0
        self._b = 0.0
        self._cap = self.max_batch_size

    cdef void _aimd_step(self, double latency) noexcept:
        cdef int smaller
        if latency >= self.slo:
            smaller = <int>(self.batch_size * self._multiplicative_decrease)
            self.batch_size = smaller if smaller > 1 else 1
        elif latency < self._hold_from:
            self._grow()

    cdef void _grow(self) noexcept:
        # Written so that batch_size + additive_increase cannot overflow.
        if self.batch_size >= self.max_batch_size - self._additive_increase:
            self.batch_size = self.max_batch_size
        else:
            self.batch_size += self._additive_increase

    cdef void _quantile_step(self, int n, double latency) noexcept:
        cdef int smaller
        self._push(n, latency)
        self._since_refit += 1
        if latency >= self.slo:
            smaller = <int>(self.batch_size * self._multiplicative_decrease)
            self.batch_size = smaller if smaller > 1 else 1
            if self._fitted and self._a * n + self._b <= self.slo:
                # The fit called this size safe: perhaps one slow batch, perhaps a
                # slower model.  Drop the fit; the next one, over the whole window
                # and refit_every newer batches, tells which.
                self._fitted = False
                self._since_refit = 0
                self._doubt = True
            elif self._doubt:
                # A second miss before that refit: the model slowed down.  Keep
                # only the newest observation and explore again.
                self._count = 0
                self._run = 0
                self._push(n, latency)
                self._since_refit = 1
                self._doubt = False
        elif not self._fitted and self._run >= self._count:
            # One size in the window and no fit: AIMD's hold band would keep it
            # there for ever (a batch of 1 already near the SLO), and a fit needs
            # a second size.
            self._grow()
        elif not self._fitted or self._run >= self._count:
            self._aimd_step(latency)
        if self._since_refit >= self._refit_every and self._run < self._count:
            self._refit()

    cdef void _push(self, int n, double latency) noexcept:
        if n == self._last_n:
            if self._run < self._window_size:
                self._run += 1
        else:
            self._last_n = n
            self._run = 1
        self._ring_n[self._head] = n
        self._ring_latency[self._head] = latency
        self._head += 1
        if self._head == self._window_size:
            self._head = 0
        if self._count < self._window_size:
            self._count += 1

    cdef void _refit(self) noexcept:
        # Called only with two distinct sizes in the window, so sxx > 0.  The
        # sums run oldest to newest, as in the twin, so that both round alike.
        cdef int m = self._count
        cdef int start = self._head - m
        cdef int i, j, idx, n, k, floor, fitted, kept
        cdef long long sum_n = 0
        cdef int max_n = 0
        cdef double sum_l = 0.0
        cdef double mean_n, mean_l, dn, sxx, sxy, a, b
        if start < 0:
            start += self._window_size
        for i in range(m):
            idx = start + i
            if idx >= self._window_size:
                idx -= self._window_size
            n = self._ring_n[idx]
            sum_n += n
            sum_l += self._ring_latency[idx]
            if n > max_n:
                max_n = n
        mean_n = <double>sum_n / m
        mean_l = sum_l / m
        sxx = 0.0
        sxy = 0.0
        for i in range(m):
            idx = start + i
            if idx >= self._window_size:
                idx -= self._window_size
            dn = self._ring_n[idx] - mean_n
            sxx += dn * dn
            sxy += dn * (self._ring_latency[idx] - mean_l)
        a = sxy / sxx
        b = mean_l - a * mean_n
        if not (isfinite(a) and isfinite(b)):
            self._drop_fit()  # latencies so large that the sums overflowed
            return
        kept = 0
        for i in range(m):
            idx = start + i
            if idx >= self._window_size:
                idx -= self._window_size
            self._scratch[i] = self._ring_latency[idx] - (a * self._ring_n[idx] + b)
            if self._scratch[i] < self.slo:
                kept += 1
        if kept < m:
            # A batch slower than its fitted latency by the whole SLO was not
            # slowed by its size: refit without it (the twin's order of sums).
            sum_n = 0
            sum_l = 0.0
            for i in range(m):
                if self._scratch[i] < self.slo:
                    idx = start + i
                    if idx >= self._window_size:
                        idx -= self._window_size
                    sum_n += self._ring_n[idx]
                    sum_l += self._ring_latency[idx]
            mean_n = <double>sum_n / kept
            mean_l = sum_l / kept
            sxx = 0.0
            sxy = 0.0
            for i in range(m):
                if self._scratch[i] < self.slo:
                    idx = start + i
                    if idx >= self._window_size:
                        idx -= self._window_size
                    dn = self._ring_n[idx] - mean_n
                    sxx += dn * dn
                    sxy += dn * (self._ring_latency[idx] - mean_l)
            if not sxx > 0.0:
                self._drop_fit()  # what is left holds a single size
                return
            a = sxy / sxx
            b = mean_l - a * mean_n
            if not (isfinite(a) and isfinite(b)):
                self._drop_fit()
                return
            j = 0
            for i in range(m):
                if self._scratch[i] < self.slo:  # read before the slot is rewritten
                    idx = start + i
                    if idx >= self._window_size:
                        idx -= self._window_size
                    self._scratch[j] = self._ring_latency[idx] - (a * self._ring_n[idx] + b)
                    j += 1
            m = kept
        # Never the largest residual (m >= 2 here): see the twin's docstring.
        k = <int>ceil(self._quantile * m) - 1
        if k < 0:
            k = 0
        elif k > m - 2:
            k = m - 2
        b += _select(self._scratch, m, k)
        if not isfinite(b):
            self._drop_fit()
            return
        self._a = a
        self._b = b
        if 2 * <long long>max_n >= self.max_batch_size:
            self._cap = self.max_batch_size
        else:
            self._cap = 2 * max_n
        self._fitted = True
        self._doubt = False
        self._since_refit = 0
        # A refit cuts by one multiplicative-decrease step at most, but stays
        # within the extrapolation cap.
        floor = <int>(self.batch_size * self._multiplicative_decrease)
        if floor > self._cap:
            floor = self._cap
        fitted = self._size_from_fit()
        self.batch_size = fitted if fitted >= floor else floor

    cdef void _drop_fit(self) noexcept:
        # No usable fit: explore with AIMD again from the current size.
        self._fitted = False
        self._since_refit = 0

    cdef int _size_from_fit(self) noexcept:
        cdef double x
        if self._a <= 0.0:
            return self._cap
        # The largest n with a * n + b < S (see the twin).
        x = (self.slo - self._b) / self._a
        if x > self._cap:
            return self._cap
        if x > 1.0:
            return <int>ceil(x) - 1
        return 1  # also when x is NaN
