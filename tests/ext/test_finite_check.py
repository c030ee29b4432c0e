"""``all_finite`` (``ext/finite_check.pyx`` and its twin): the same answer as
``np.isfinite(array).all()`` for every float array, whatever its dtype, byte order,
layout or size, on both implementations."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

_SPECIALS = (np.nan, np.inf, -np.inf)


def agree(impl: SimpleNamespace, array: Any) -> bool:
    answer = impl.all_finite(array)
    assert type(answer) is bool
    assert answer == bool(np.isfinite(array).all()), array
    return answer


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f8", ">f8", "f2"])
@pytest.mark.parametrize("size", [0, 1, 8, 255, 256, 257, 4096])
def test_every_position_of_each_special_value(impl: SimpleNamespace, dtype: str, size: int) -> None:
    arr = np.linspace(-3.0, 3.0, size).astype(dtype)
    assert agree(impl, arr)
    for at in {0, size // 2, size - 1} if size else set():
        for special in _SPECIALS:
            bad = arr.copy()
            bad[at] = special
            assert not agree(impl, bad)


def test_layouts(impl: SimpleNamespace) -> None:
    base = np.arange(60, dtype=np.float32).reshape(3, 4, 5) / 7
    views = [
        base,
        base.T,  # Fortran order: contiguous, scanned flat
        base[:, ::2, :],  # neither: numpy answers
        base.reshape(-1)[::-3],  # one dimension, negative stride
        base.reshape(-1)[7:8],
        np.full((), 1.5, np.float32),  # 0-d
        np.asfortranarray(base.astype(np.float64)),
        base.astype(np.float64)[::2, ::-1, 1::2],
    ]
    for v in views:
        assert agree(impl, v)
        if v.size:
            bad = v.copy(order="K")
            bad[(-1,) * bad.ndim] = np.nan
            assert not agree(impl, bad)
            # the same non-finite number seen through a strided view of a larger array
            holder = np.zeros(v.size * 2, dtype=v.dtype)
            holder[-2] = np.inf
            assert not agree(impl, holder[::2])
            assert agree(impl, holder[1::2])


def test_other_inputs_take_numpys_answer(impl: SimpleNamespace) -> None:
    assert agree(impl, np.arange(5))  # integers are finite
    assert agree(impl, np.array([True, False]))
    assert not agree(impl, [1.0, float("nan")])  # no buffer: numpy reads the list
    assert agree(impl, np.array([1.0, 2.0], dtype=np.longdouble))
    assert not agree(impl, np.array([1.0, np.inf], dtype=np.complex64))
    # A subclass goes to numpy: a masked array's hidden NaN does not count.
    masked = np.ma.array([np.nan, 1.0], mask=[True, False])
    assert agree(impl, masked)
    # Buffers of other exporters too (this one is not aligned for doubles).
    assert agree(impl, memoryview(bytearray(17))[1:].cast("d"))
    unaligned = np.frombuffer(bytearray(8 * 5 + 1), dtype=np.float64, offset=1)
    assert agree(impl, unaligned)
    readonly = np.ones(10, np.float32)
    readonly.flags.writeable = False
    assert agree(impl, readonly)


@settings(max_examples=300, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.dtype("<f4"), np.dtype(">f8"), np.dtype("<f8")]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
        elements={"allow_nan": True, "allow_infinity": True},
    ),
    st.booleans(),
)
def test_matches_numpy_on_arbitrary_arrays(array: Any, transpose: bool) -> None:
    from clipper_core.structures import load

    view = array.T if transpose else array
    for use_extensions in (True, False):
        agree(load(use_extensions), view)
