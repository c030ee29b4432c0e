"""The ``Model`` base class that users subclass, and the adapter for closures."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from model_containers.tensor_spec import TensorSpec

if TYPE_CHECKING:
    import numpy as np

__all__ = ["INPUT_TYPES", "ClosureModel", "Model", "TensorSpec"]

#: Clipper's input types, as accepted on the command line and in ``Model.input_type``.
INPUT_TYPES: tuple[str, ...] = ("ints", "floats", "doubles", "strings", "bytes")


class Model:
    """Base class of a model served by a container.

    Subclass it and implement ``predict``; optionally ``load``.  The container
    creates the instance with no arguments, sets ``model_path`` (from
    ``--model-path``), calls ``load()`` once, and then calls ``predict`` once per
    batch.  With ``--max-workers 1`` (the default) calls never overlap.

    Class attributes describe the model (all optional):

    Attributes:
        input_type: One of ``"ints"``, ``"floats"``, ``"doubles"``, ``"strings"``,
            ``"bytes"``.  When set, ``--input-type`` may be omitted, and must agree
            when given.
        output_type: Free text reported in the container's metadata.
        platform: Reported in metadata (``"python_model"`` by default).
        inputs: OIP tensor specs of the inputs, the batch dimension first (-1).
            The frontend validates Open Inference Protocol requests against them.
            Default: one input ``input`` of the input type's datatype (ints →
            INT32, floats → FP32, doubles → FP64, strings/bytes → BYTES), shape
            ``(-1, -1)``.
        outputs: OIP tensor specs of the outputs.  Default: one output
            ``output`` reported as BYTES, shape ``(-1,)``, whose datatype is
            inferred from what ``predict`` returns; a declared output's datatype
            is what the default ``predict_tensors`` casts to.
        model_path: The ``--model-path`` directory, set before ``load()``; ``None``
            when not given.

    Example::

        class Doubler(Model):
            input_type = "doubles"

            def predict(self, inputs):
                return [x * 2 for x in inputs]
    """

    input_type: ClassVar[str | None] = None
    output_type: ClassVar[str] = ""
    platform: ClassVar[str] = "python_model"
    inputs: ClassVar[Sequence[TensorSpec]] = ()
    outputs: ClassVar[Sequence[TensorSpec]] = ()

    model_path: str | None = None

    def load(self) -> None:
        """Load weights or other state; called once before the first ``predict``."""

    def predict(self, inputs: list[Any]) -> Sequence[Any]:
        """Predict a batch.

        Args:
            inputs: N inputs, by input type: 1-D numpy arrays (``int32``,
                ``float32``, ``float64``) for the numeric types, ``str`` for
                strings, ``bytes`` for bytes.  The arrays are writable.

        Returns:
            Exactly N outputs, in order: a list (or tuple) of JSON-serialisable
            values, numpy arrays or scalars, or ``bytes``; or one numpy array whose
            first dimension is N.
        """
        raise NotImplementedError(f"{type(self).__name__}.predict is not implemented")

    def predict_tensors(self, inputs: Mapping[str, np.ndarray]) -> Mapping[str, Any]:
        """Predict a batch of named tensors (Open Inference Protocol requests).

        The frontend concatenates the requests of a batch along the first
        dimension, so every input holds N rows from one or more clients; each
        output must hold exactly N rows, in the same order.  Override it for
        models with several inputs or outputs.

        The default serves a model written for ``predict``: it takes exactly one
        input tensor, passes each of its N rows as one input (numeric rows
        flattened to 1-D arrays of the input type's dtype; BYTES rows of one
        element as ``str`` or ``bytes``), and returns the N outputs as one tensor
        named after the first declared output (``output`` by default).

        An override that declares a ``parameters`` argument, as in
        ``def predict_tensors(self, inputs, parameters=None)``, also receives the
        requests' OIP ``parameters`` (a dict; ``timeout`` and
        ``binary_data_output`` are the server's and left out).  Requests with
        different parameters never share a call, and they key the cache too.

        Args:
            inputs: Input name to a writable numpy array, first dimension N
                (BYTES tensors are object arrays of ``bytes``).

        Returns:
            Output name to an array-like with first dimension N: numeric arrays,
            or object/str arrays for BYTES (``str`` is sent as UTF-8).
        """
        from model_containers.tensors import predict_rows

        return predict_rows(self, inputs)


class ClosureModel(Model):
    """Adapts a plain callable ``f(inputs: list) -> list`` (Clipper's python closure)."""

    platform: ClassVar[str] = "python_closure"

    def __init__(self, func: Callable[[list[Any]], Sequence[Any]]) -> None:
        if not callable(func):
            raise TypeError(f"a closure model needs a callable, got {type(func).__name__}")
        self.func = func

    def predict(self, inputs: list[Any]) -> Sequence[Any]:
        return self.func(inputs)
