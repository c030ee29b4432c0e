"""A fast path for the commonest body of ``POST /<app>/predict``: ``{"input": [n, ...]}``.

``parse_single_input`` reads a body that is exactly one ``"input"`` key holding a
flat array of JSON numbers (whitespace anywhere JSON allows it) straight into a
float32 or float64 array, in one pass over the bytes: no Python float per number,
no list, no second pass through numpy.  Anything else -- another key, a nested
array, a boolean, an empty array, an escape in the key, an integer of more than
15 digits, a number out of the type's range -- returns None, and the caller
parses the body the general way (``orjson`` and numpy), which also words every
error.  So this path only ever answers what the general path answers, with the
same numbers:

* a number with a fraction or an exponent is the correctly rounded double of its
  decimal text, as orjson's: exactly by one multiplication or division when its
  significant digits (at most 19) fit 53 bits and its power of ten is within 22
  (Clinger's fast path: both operands exact, one IEEE rounding), else by
  ``PyOS_string_to_double`` (Python's correctly rounded ``float()``);
* an integer (no fraction, no exponent, at most 15 digits) is the double of its
  value, exact, and ``-0`` is ``0.0``, as numpy makes of JSON's integers;
* float32 is the double rounded once (numpy's ``astype``), refused above
  float32's largest finite value, where the general path answers 400.

The pure-Python twin is ``clipper_core._pure.json_numbers``.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.math cimport isfinite, fabs

import numpy as np

cdef extern from "Python.h":
    # overflow_exception NULL: an overflow returns +-inf instead of raising.
    double PyOS_string_to_double(
        const char *s, char **endptr, PyObject *overflow_exception
    ) except? -1.0

cdef extern from "float.h":
    double FLT_MAX

# Exact powers of ten as doubles (10**22 is the largest that is exact).
cdef double[23] _POW10
cdef int _k
_POW10[0] = 1.0
for _k in range(1, 23):
    _POW10[_k] = _POW10[_k - 1] * 10.0

cdef uint64_t _TWO53 = (<uint64_t>1) << 53


cdef inline bint _is_ws(unsigned char c) noexcept nogil:
    return c == 32 or c == 9 or c == 10 or c == 13


cdef inline Py_ssize_t _skip_ws(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    while i < n and _is_ws(s[i]):
        i += 1
    return i


cdef inline bint _is_digit(unsigned char c) noexcept nogil:
    return 48 <= c <= 57


cdef Py_ssize_t _number(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, double* out) except -2:
    """Parse one JSON number at ``s[i]``; return the index after it, or -1 when the
    text there is not a number this path takes."""
    cdef Py_ssize_t start = i
    cdef bint negative = False
    cdef bint integral = True
    cdef bint inexact = False
    cdef uint64_t mantissa = 0
    cdef int significant = 0
    cdef int int_digits = 0
    cdef long exp10 = 0
    cdef long exponent = 0
    cdef bint exp_negative = False
    cdef unsigned char c
    cdef double value
    cdef char* end

    if i < n and s[i] == 45:  # '-'
        negative = True
        i += 1
    if i >= n or not _is_digit(s[i]):
        return -1
    if s[i] == 48:  # '0': no other integer digit may follow
        i += 1
        int_digits = 1
    else:
        while i < n and _is_digit(s[i]):
            c = s[i] - 48
            int_digits += 1
            if significant < 19:
                mantissa = mantissa * 10 + c
                significant += 1
            else:
                exp10 += 1
                if c != 0:
                    inexact = True
            i += 1
    if i < n and s[i] == 46:  # '.'
        integral = False
        i += 1
        if i >= n or not _is_digit(s[i]):
            return -1
        while i < n and _is_digit(s[i]):
            c = s[i] - 48
            if significant < 19:
                mantissa = mantissa * 10 + c
                exp10 -= 1
                if mantissa != 0:
                    significant += 1
            elif c != 0:
                inexact = True
            i += 1
    if i < n and (s[i] == 101 or s[i] == 69):  # 'e' or 'E'
        integral = False
        i += 1
        if i < n and (s[i] == 43 or s[i] == 45):
            exp_negative = s[i] == 45
            i += 1
        if i >= n or not _is_digit(s[i]):
            return -1
        while i < n and _is_digit(s[i]):
            if exponent < 100000:
                exponent = exponent * 10 + (s[i] - 48)
            i += 1
        exp10 += -exponent if exp_negative else exponent
    if integral:
        # numpy makes an integer of it first: -0 is 0, and past 15 digits the
        # general path decides (int64, or a float beyond 64 bits).
        if int_digits > 15:
            return -1
        value = <double>mantissa
        out[0] = -value if (negative and mantissa != 0) else value
        return i
    if not inexact and mantissa < _TWO53 and -22 <= exp10 <= 22:
        value = <double>mantissa
        if exp10 >= 0:
            value = value * _POW10[exp10]
        else:
            value = value / _POW10[-exp10]
        out[0] = -value if negative else value
        return i
    # The correctly rounded conversion of the token's text; the byte after the
    # token is not part of a number (bytes objects end with a NUL), so strtod-like
    # parsing stops exactly there.
    value = PyOS_string_to_double(<const char*>s + start, &end, NULL)
    if end != <char*>s + i:
        return -1
    out[0] = value
    return i


def parse_single_input(bytes body not None, bint as_float32, Py_ssize_t max_elements):
    """The numbers of a body ``{"input": [n, ...]}`` as a 1-D float32 (or float64)
    array, or None when the body is anything else (see the module's text)."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t i = _skip_ws(s, 0, n)
    cdef Py_ssize_t count = 0
    cdef Py_ssize_t capacity = 64
    cdef Py_ssize_t k
    cdef double value = 0.0
    cdef double* values
    cdef double* grown
    cdef float[::1] out32
    cdef double[::1] out64

    if i >= n or s[i] != 123:  # '{'
        return None
    i = _skip_ws(s, i + 1, n)
    if n - i < 7 or (s[i] != 34 or s[i + 1] != 105 or s[i + 2] != 110 or s[i + 3] != 112
                     or s[i + 4] != 117 or s[i + 5] != 116 or s[i + 6] != 34):  # "input"
        return None
    i = _skip_ws(s, i + 7, n)
    if i >= n or s[i] != 58:  # ':'
        return None
    i = _skip_ws(s, i + 1, n)
    if i >= n or s[i] != 91:  # '['
        return None
    i = _skip_ws(s, i + 1, n)

    values = <double*>malloc(capacity * sizeof(double))
    if values == NULL:
        raise MemoryError()
    try:
        while True:
            i = _number(s, i, n, &value)
            if i < 0 or not isfinite(value):
                return None
            if as_float32 and fabs(value) > FLT_MAX:
                return None
            if count == capacity:
                if count >= max_elements:
                    return None
                capacity *= 2
                grown = <double*>realloc(values, capacity * sizeof(double))
                if grown == NULL:
                    raise MemoryError()
                values = grown
            values[count] = value
            count += 1
            i = _skip_ws(s, i, n)
            if i >= n:
                return None
            if s[i] == 44:  # ','
                i = _skip_ws(s, i + 1, n)
                continue
            if s[i] == 93:  # ']'
                break
            return None
        if count > max_elements:
            return None
        i = _skip_ws(s, i + 1, n)
        if i >= n or s[i] != 125:  # '}'
            return None
        if _skip_ws(s, i + 1, n) != n:
            return None
        if as_float32:
            arr = np.empty(count, dtype=np.float32)
            out32 = arr
            for k in range(count):
                out32[k] = <float>values[k]
        else:
            arr = np.empty(count, dtype=np.float64)
            out64 = arr
            for k in range(count):
                out64[k] = values[k]
        return arr
    finally:
        free(values)
