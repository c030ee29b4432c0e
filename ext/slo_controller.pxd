# Declarations of the latency-SLO batch-size controller.  Other extensions
# cimport SloController and read ``batch_size`` at C level (no Python call).

cdef enum SloMode:
    SLO_MODE_AIMD = 1
    SLO_MODE_QUANTILE = 2
    SLO_MODE_FIXED = 3


cdef class SloController:
    cdef readonly double slo              # latency objective, seconds
    cdef readonly int max_batch_size      # upper bound of batch_size
    cdef readonly int batch_size          # current recommendation, in [1, max_batch_size]

    cdef int _mode                        # SloMode; 0 until __cinit__ succeeded
    cdef int _initial_batch_size          # batch_size after construction and reset()
    cdef int _additive_increase
    cdef double _multiplicative_decrease
    cdef double _tolerance
    cdef double _hold_from                # slo - tolerance * slo: AIMD holds in [_hold_from, slo)
    cdef double _quantile
    cdef int _refit_every
    cdef long long _observations

    # Sliding window of the last _window_size (batch size, latency) pairs, as two
    # ring buffers owned by this object (PyMem_Malloc'd in __cinit__, freed in
    # __dealloc__), plus scratch space for the residuals of a refit.
    cdef int *_ring_n
    cdef double *_ring_latency
    cdef double *_scratch
    cdef int _window_size
    cdef int _head                        # next slot to write
    cdef int _count                       # filled slots, <= _window_size
    cdef int _last_n                      # batch size of the newest observation, 0 if none
    cdef int _run                         # trailing run of equal sizes; < _count iff 2+ sizes
    cdef int _since_refit                 # observations since the last fit or flush

    # The quantile fit in use: L_q(n) = _a * n + _b, valid while _fitted.
    cdef bint _fitted
    cdef bint _doubt                      # a miss dropped the fit; no refit since
    cdef double _a
    cdef double _b
    cdef int _cap                         # extrapolation limit: 2 * largest size in the window

    # observe() for other extensions: no Python call, no argument boxing.
    cdef int observe_c(self, int batch_size, double latency) except -1
    cdef int _check(self, int batch_size, double latency) except -1
    cpdef void set_slo(self, double slo) except *
    cpdef void reset(self) noexcept
    cdef void _forget(self) noexcept
    cdef void _aimd_step(self, double latency) noexcept
    cdef void _grow(self) noexcept
    cdef void _quantile_step(self, int n, double latency) noexcept
    cdef void _push(self, int n, double latency) noexcept
    cdef void _refit(self) noexcept
    cdef void _drop_fit(self) noexcept
    cdef int _size_from_fit(self) noexcept
