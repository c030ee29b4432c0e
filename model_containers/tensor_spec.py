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

    def __post_init__(self) -> None:
        # As the framework deployers take them: "fp32" is FP32, a None dimension
        # is -1 (a lower-case datatype reached OIP as a KeyError on every query,
        # a None dimension failed the deploy with a TypeError).
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a tensor's name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.datatype, str) or self.datatype.upper() not in _DATATYPES:
            raise ValueError(
                f"tensor {self.name!r}: unknown datatype {self.datatype!r}; expected one of"
                f" {', '.join(sorted(_DATATYPES))}"
            )
        object.__setattr__(self, "datatype", self.datatype.upper())
        try:
            shape = tuple(-1 if d is None else int(d) for d in self.shape)
        except (TypeError, ValueError):
            raise ValueError(
                f"tensor {self.name!r}: shape {self.shape!r} is not a list of integers"
            ) from None
        object.__setattr__(self, "shape", shape)


#: The Open Inference Protocol's tensor datatypes.
_DATATYPES = frozenset(
    "BOOL UINT8 UINT16 UINT32 UINT64 INT8 INT16 INT32 INT64 FP16 FP32 FP64 BYTES".split()
)
