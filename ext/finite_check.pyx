"""Whether a float array holds only finite numbers, without a pass through numpy.

A JSON reply cannot carry NaN or an infinity, so every float output is checked
before it is written; ``np.isfinite(a).all()`` costs a few microseconds of fixed
overhead (a temporary array and a reduction through numpy's Python-level
``_methods``), which at 256 numbers is more than the reply's own serialisation
saves.  Here a contiguous (or one-dimensional strided) float32 or float64 array of
native byte order is read through the buffer protocol and scanned in C, stopping
at the first non-finite number.  Anything else -- another dtype, another byte
order, a non-contiguous array of several dimensions, an object without a buffer --
is answered by numpy, so the answer is always numpy's.  So is any object that is
not exactly an ``ndarray``: a subclass may mean something else by its data (a
masked array hides some of it), and another exporter may hand over a buffer that
is not aligned for its type.

The pure-Python twin is ``clipper_core._pure.finite_check``.
"""

from cpython.buffer cimport (
    PyBUF_RECORDS_RO,
    PyBuffer_IsContiguous,
    PyBuffer_Release,
    PyObject_GetBuffer,
)
from libc.math cimport isfinite

import numpy as np

_ndarray = np.ndarray


ctypedef fused real:
    float
    double


cdef bint _finite(const real* p, Py_ssize_t n, Py_ssize_t step) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if not isfinite(p[i * step]):
            return False
    return True


def all_finite(object array):
    """Whether ``array`` (a float array) holds no NaN and no infinity.

    Returns ``bool(np.isfinite(array).all())``; for an ``ndarray`` of float32 or
    float64, native byte order, aligned, contiguous or one-dimensional, without
    numpy.
    """
    cdef Py_buffer view
    cdef Py_ssize_t n, step
    cdef int kind = 0  # 1: float32, 2: float64, 0: numpy decides
    cdef bint ok = True
    cdef bint exported = False
    if type(array) is _ndarray:
        try:
            PyObject_GetBuffer(array, &view, PyBUF_RECORDS_RO)
            exported = True
        except (BufferError, TypeError, ValueError):
            pass  # datetime and string dtypes have no buffer: numpy answers
    if not exported:
        return bool(np.isfinite(array).all())
    try:
        # numpy writes an aligned float32 of native order as "f" and such a
        # float64 as "d"; a byte order, an unaligned array ("=d") or any other
        # type comes with another format.
        if view.format != NULL and view.format[0] != 0 and view.format[1] == 0:
            if view.format[0] == b"f" and view.itemsize == 4:
                kind = 1
            elif view.format[0] == b"d" and view.itemsize == 8:
                kind = 2
        if kind:
            if PyBuffer_IsContiguous(&view, b"A"):
                n = view.len // view.itemsize
                step = 1
            elif view.ndim == 1 and view.strides[0] % view.itemsize == 0:
                n = view.shape[0]
                step = view.strides[0] // view.itemsize
            else:
                kind = 0
        if kind == 1:
            with nogil:
                ok = _finite(<const float*>view.buf, n, step)
        elif kind == 2:
            with nogil:
                ok = _finite(<const double*>view.buf, n, step)
    finally:
        PyBuffer_Release(&view)
    if kind == 0:
        return bool(np.isfinite(array).all())
    return ok
