"""The description of one tensor in a model's Open Inference Protocol metadata."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor in Open Inference Protocol metadata.

    Attributes:
        name: Tensor name.
        datatype: OIP datatype (``"FP64"``, ``"INT32"``, ``"BYTES"``, ...).
        shape: Dimensions; ``-1`` marks a variable one.
    """

    name: str
    datatype: str
    shape: tuple[int, ...] = ()
