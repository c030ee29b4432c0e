"""Fast paths for the commonest JSON query bodies: Clipper's ``{"input": [n, ...]}``
and an Open Inference Protocol request of FP32/FP64 numbers.

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

``parse_oip_request`` does the same for ``POST /v2/models/{m}/infer``: a request
of ``"inputs"`` (and an ``"id"``), each input exactly a name, a shape, ``FP32`` or
``FP64`` and its numbers in ``"data"``; anything else (parameters, outputs,
binary data, other datatypes, an escape or non-ASCII in a string, a key twice)
returns None for the general path.

The pure-Python twin is ``clipper_core._pure.json_numbers``.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp
from libc.math cimport isfinite, fabs

import numpy as np

cdef extern from "Python.h":
    # overflow_exception NULL: an overflow returns +-inf instead of raising.
    double PyOS_string_to_double(
        const char *s, char **endptr, PyObject *overflow_exception
    ) except? -1.0

cdef extern from "float.h":
    double FLT_MAX

# The scanners below return the index after what they read, or -1 when the text
# is not what this path takes (the caller then returns None: the general path
# decides); ``except -2`` only marks a Python exception (MemoryError) raised.

# The four keys of an OIP input, as bits of the ones seen.
cdef enum:
    _NAME = 1
    _DATATYPE = 2
    _SHAPE = 4
    _DATA = 8
    _ALL_FIELDS = 15

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
            # Capped, and then the text goes to PyOS_string_to_double, which
            # reads the exponent itself (overflowing to inf or 0): the capped
            # value plus a fraction's leading zeros could land in -22..22 and
            # take the quick branch below (0.<99,977 zeros>1e1000000 read 1e22).
            if exponent < 100000:
                exponent = exponent * 10 + (s[i] - 48)
            else:
                inexact = True
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


cdef inline Py_ssize_t _after_item(
    const unsigned char* s, Py_ssize_t i, Py_ssize_t n, unsigned char close, bint* closed
) noexcept nogil:
    """After an item of an array or object: at a ``,`` return the index of the next
    item (``closed`` False), at ``close`` the index after it (``closed`` True), at
    anything else -1."""
    i = _skip_ws(s, i, n)
    if i >= n:
        return -1
    if s[i] == 44:  # ','
        closed[0] = False
        return _skip_ws(s, i + 1, n)
    if s[i] == close:
        closed[0] = True
        return i + 1
    return -1


cdef class _Numbers:
    """A growing buffer of parsed doubles (freed with the object)."""

    cdef double* values
    cdef Py_ssize_t count
    cdef Py_ssize_t capacity

    def __cinit__(self):
        self.capacity = 64
        self.count = 0
        self.values = <double*>malloc(self.capacity * sizeof(double))
        if self.values == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.values)

    cdef int push(self, double value) except -1:
        cdef double* grown
        if self.count == self.capacity:
            grown = <double*>realloc(self.values, 2 * self.capacity * sizeof(double))
            if grown == NULL:
                raise MemoryError()
            self.values = grown
            self.capacity *= 2
        self.values[self.count] = value
        self.count += 1
        return 0

    cdef object array(self, Py_ssize_t start, bint as_float32):
        """The numbers from ``start`` on as a new 1-D float32 or float64 array."""
        cdef Py_ssize_t k
        cdef Py_ssize_t size = self.count - start
        cdef float[::1] out32
        cdef double[::1] out64
        if as_float32:
            arr = np.empty(size, dtype=np.float32)
            out32 = arr
            for k in range(size):
                out32[k] = <float>self.values[start + k]
        else:
            arr = np.empty(size, dtype=np.float64)
            out64 = arr
            for k in range(size):
                out64[k] = self.values[start + k]
        return arr


cdef Py_ssize_t _array(
    const unsigned char* s, Py_ssize_t i, Py_ssize_t n, _Numbers into,
    bint as_float32, Py_ssize_t max_elements,
) except -2:
    """Parse a non-empty flat array of numbers at ``s[i]`` (its ``[``) into ``into``;
    return the index after its ``]``, or -1 when it is not one this path takes."""
    cdef double value = 0.0
    cdef Py_ssize_t first = into.count
    cdef bint closed = False
    if i >= n or s[i] != 91:  # '['
        return -1
    i = _skip_ws(s, i + 1, n)
    while True:
        i = _number(s, i, n, &value)
        if i < 0 or not isfinite(value):
            return -1
        if as_float32 and fabs(value) > FLT_MAX:
            return -1
        if into.count - first >= max_elements:
            return -1
        into.push(value)
        i = _after_item(s, i, n, 93, &closed)  # ']'
        if i < 0 or closed:
            return i


cdef Py_ssize_t _string(
    const unsigned char* s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* start
) noexcept nogil:
    """Find a JSON string of plain ASCII (no escape) at ``s[i]``; set ``start`` to its
    first character and return the index of its closing quote, or -1."""
    if i >= n or s[i] != 34:  # '"'
        return -1
    i += 1
    start[0] = i
    while i < n:
        if s[i] == 34:
            return i
        if s[i] == 92 or s[i] < 32 or s[i] >= 128:  # an escape, a control, non-ASCII
            return -1
        i += 1
    return -1


cdef inline bint _is(
    const unsigned char* s, Py_ssize_t start, Py_ssize_t end, const char* word, Py_ssize_t size
) noexcept nogil:
    return end - start == size and memcmp(s + start, word, size) == 0


cdef inline Py_ssize_t _key(
    const unsigned char* s, Py_ssize_t i, Py_ssize_t n, Py_ssize_t* start, Py_ssize_t* end
) noexcept nogil:
    """An object's key and its colon at ``s[i]``: set the key's bounds and return
    the index of its value, or -1."""
    end[0] = _string(s, i, n, start)
    if end[0] < 0:
        return -1
    i = _skip_ws(s, end[0] + 1, n)
    if i >= n or s[i] != 58:  # ':'
        return -1
    return _skip_ws(s, i + 1, n)


def parse_single_input(bytes body not None, bint as_float32, Py_ssize_t max_elements):
    """The numbers of a body ``{"input": [n, ...]}`` as a 1-D float32 (or float64)
    array, or None when the body is anything else (see the module's text)."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t i = _skip_ws(s, 0, n)
    cdef Py_ssize_t start = 0
    cdef Py_ssize_t end
    cdef _Numbers numbers

    if i >= n or s[i] != 123:  # '{'
        return None
    i = _key(s, _skip_ws(s, i + 1, n), n, &start, &end)
    if i < 0 or not _is(s, start, end, b"input", 5):
        return None
    numbers = _Numbers()
    i = _array(s, i, n, numbers, as_float32, max_elements)
    if i < 0:
        return None
    i = _skip_ws(s, i, n)
    if i >= n or s[i] != 125:  # '}'
        return None
    if _skip_ws(s, i + 1, n) != n:
        return None
    return numbers.array(0, as_float32)


cdef Py_ssize_t _shape(
    const unsigned char* s, Py_ssize_t i, Py_ssize_t n, list dims
) except -2:
    """Parse an array of integers >= 0 of at most 15 digits (possibly empty) into
    ``dims``; return the index after it, or -1."""
    cdef long long d
    cdef int digits
    cdef bint closed = False
    if i >= n or s[i] != 91:  # '['
        return -1
    i = _skip_ws(s, i + 1, n)
    if i < n and s[i] == 93:
        return i + 1
    while True:
        if i >= n or not _is_digit(s[i]) or (s[i] == 48 and i + 1 < n and _is_digit(s[i + 1])):
            return -1
        d = 0
        digits = 0
        while i < n and _is_digit(s[i]):
            d = d * 10 + (s[i] - 48)
            digits += 1
            if digits > 15:
                return -1
            i += 1
        if i < n and (s[i] == 46 or s[i] == 101 or s[i] == 69):  # a fraction or exponent
            return -1
        dims.append(d)
        i = _after_item(s, i, n, 93, &closed)  # ']'
        if i < 0 or closed:
            return i


cdef Py_ssize_t _input(
    const unsigned char* s, Py_ssize_t i, Py_ssize_t n, _Numbers numbers,
    Py_ssize_t max_elements, list inputs,
) except -2:
    """One input object at ``s[i]``, exactly ``name``, ``shape``, ``datatype`` and
    ``data`` in any order: append ``(name, datatype, shape, array)`` to ``inputs``
    and return the index after its ``}``, or -1."""
    cdef Py_ssize_t start = 0
    cdef Py_ssize_t end = 0
    cdef Py_ssize_t first = numbers.count
    cdef Py_ssize_t count = 1
    cdef Py_ssize_t k
    cdef long long d
    cdef int fields = 0
    cdef bint closed = False
    cdef bint as_float32
    cdef list dims = []
    name = datatype = None
    if i >= n or s[i] != 123:  # '{'
        return -1
    i = _skip_ws(s, i + 1, n)
    while True:
        i = _key(s, i, n, &start, &end)
        if i < 0:
            return -1
        if _is(s, start, end, b"name", 4) and not fields & _NAME:
            fields |= _NAME
            end = _string(s, i, n, &start)
            if end <= start:  # not a string, or empty
                return -1
            name = (<bytes>s[start:end]).decode("ascii")
            i = end + 1
        elif _is(s, start, end, b"datatype", 8) and not fields & _DATATYPE:
            fields |= _DATATYPE
            end = _string(s, i, n, &start)
            if end < 0:
                return -1
            if _is(s, start, end, b"FP32", 4):
                datatype = "FP32"
            elif _is(s, start, end, b"FP64", 4):
                datatype = "FP64"
            else:
                return -1
            i = end + 1
        elif _is(s, start, end, b"shape", 5) and not fields & _SHAPE:
            fields |= _SHAPE
            i = _shape(s, i, n, dims)
        elif _is(s, start, end, b"data", 4) and not fields & _DATA:
            fields |= _DATA
            # As doubles: the datatype, which may come later, decides float32.
            i = _array(s, i, n, numbers, False, max_elements)
        else:
            return -1
        if i < 0:
            return -1
        i = _after_item(s, i, n, 125, &closed)  # '}'
        if i < 0:
            return -1
        if closed:
            break
    if fields != _ALL_FIELDS:
        return -1
    for dim in dims:
        d = dim
        # Refused before the product could pass max_elements (or wrap around).
        if d != 0 and count > max_elements // d:
            return -1
        count *= d
    if count != numbers.count - first:
        return -1
    as_float32 = datatype == "FP32"
    if as_float32:
        for k in range(first, numbers.count):
            if fabs(numbers.values[k]) > FLT_MAX:
                return -1
    inputs.append((name, datatype, tuple(dims), numbers.array(first, as_float32)))
    numbers.count = first  # the next input reuses the buffer
    return i


def parse_oip_request(bytes body not None, Py_ssize_t max_elements):
    """The inputs of an Open Inference Protocol JSON request whose every input is
    FP32 or FP64 data given as numbers, or None for any other body.

    Taken: an object of ``"inputs"`` and optionally ``"id"`` (no other key, none
    twice), ``"inputs"`` a non-empty array of objects each with exactly ``"name"``,
    ``"shape"``, ``"datatype"`` and ``"data"`` (any order): name and id plain ASCII
    strings without escapes, the name not empty, shape integers >= 0 of at most 15
    digits, datatype
    ``"FP32"`` or ``"FP64"``, data a flat non-empty array of numbers whose count is
    the shape's (at most ``max_elements``).  Returns ``(id or None, [(name,
    datatype, shape tuple, 1-D array of that datatype), ...])``; the caller
    reshapes.
    """
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t i = _skip_ws(s, 0, n)
    cdef Py_ssize_t start = 0
    cdef Py_ssize_t end = 0
    cdef bint seen_inputs = False
    cdef bint seen_id = False
    cdef bint closed = False
    cdef _Numbers numbers = _Numbers()
    cdef list inputs = []
    request_id = None

    if i >= n or s[i] != 123:  # '{'
        return None
    i = _skip_ws(s, i + 1, n)
    while True:
        i = _key(s, i, n, &start, &end)
        if i < 0:
            return None
        if _is(s, start, end, b"id", 2) and not seen_id:
            seen_id = True
            end = _string(s, i, n, &start)
            if end < 0:
                return None
            request_id = (<bytes>s[start:end]).decode("ascii")
            i = end + 1
        elif _is(s, start, end, b"inputs", 6) and not seen_inputs:
            seen_inputs = True
            if i >= n or s[i] != 91:  # '['
                return None
            i = _skip_ws(s, i + 1, n)
            closed = False
            while not closed:
                i = _input(s, i, n, numbers, max_elements, inputs)
                if i < 0:
                    return None
                i = _after_item(s, i, n, 93, &closed)  # ']'
                if i < 0:
                    return None
        else:
            return None
        i = _after_item(s, i, n, 125, &closed)  # '}'
        if i < 0:
            return None
        if closed:
            break
    if not seen_inputs or _skip_ws(s, i, n) != n:
        return None
    return request_id, inputs
