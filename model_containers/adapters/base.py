"""What every framework adapter shares: the model directory, batching, metadata.

A model directory, as a ``clipper_core`` deployer writes it::

    clipper_model.json   {"format": 1, "adapter": "sklearn", "input_type": "doubles",
                          "options": {...}, "func": "func.pkl" | null,
                          "inputs": [TensorSpec...] | null, "outputs": [...] | null}
    func.pkl             optional: a cloudpickled func(model, inputs) -> outputs
    ...                  the model in its framework's format (options say where)

``predict`` calls the framework once per batch: numeric inputs are stacked into
one ``(N, d)`` array (:meth:`FrameworkModel.predict_batch`), strings and bytes are
passed as one list.  With a ``func``, ``func(model, inputs)`` gets the batch as a
list instead (Clipper's contract) and does its own batching.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from model_containers.model import INPUT_TYPES, Model, TensorSpec

log = logging.getLogger("model_containers")

MANIFEST = "clipper_model.json"
MANIFEST_FORMAT = 1

#: The numpy dtype a numeric input type decodes to.
INPUT_DTYPES: dict[str, np.dtype[Any]] = {
    "ints": np.dtype(np.int32),
    "floats": np.dtype(np.float32),
    "doubles": np.dtype(np.float64),
}

_OIP_BY_KIND_SIZE: dict[tuple[str, int], str] = {
    ("b", 1): "BOOL",
    ("u", 1): "UINT8",
    ("u", 2): "UINT16",
    ("u", 4): "UINT32",
    ("u", 8): "UINT64",
    ("i", 1): "INT8",
    ("i", 2): "INT16",
    ("i", 4): "INT32",
    ("i", 8): "INT64",
    ("f", 2): "FP16",
    ("f", 4): "FP32",
    ("f", 8): "FP64",
}


class AdapterError(Exception):
    """The model directory is missing, malformed, or for another adapter."""


def oip_datatype(dtype: Any) -> str:
    """The Open Inference Protocol datatype of a numpy dtype (``BYTES`` for text)."""
    dt = np.dtype(dtype)
    return _OIP_BY_KIND_SIZE.get((dt.kind, dt.itemsize), "BYTES")


def input_datatype(input_type: str) -> str:
    """The OIP datatype in which a Clipper input type reaches the model."""
    dt = INPUT_DTYPES.get(input_type)
    return "BYTES" if dt is None else oip_datatype(dt)


def tensor_spec(value: Any) -> TensorSpec:
    """A ``TensorSpec`` from a dict ``{"name", "datatype", "shape"}`` or a spec."""
    if isinstance(value, TensorSpec):
        return value
    if not isinstance(value, dict):
        raise AdapterError(f"a tensor spec must be an object, got {value!r}")
    shape = value.get("shape") or ()
    return TensorSpec(
        name=str(value.get("name", "")),
        datatype=str(value.get("datatype", "")).upper(),
        shape=tuple(-1 if d is None else int(d) for d in shape),
    )


def read_manifest(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``clipper_model.json`` of a model directory."""
    path = Path(model_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise AdapterError(f"{path} does not exist: not a model directory of a deployer") from None
    except (OSError, ValueError) as exc:
        raise AdapterError(f"cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise AdapterError(f"{path}: unsupported manifest (format {MANIFEST_FORMAT} expected)")
    return manifest


class FrameworkModel(Model):
    """Base of the adapters: subclasses implement ``load_model`` and ``predict_batch``.

    Attributes set by ``load()``:
        model: The framework's model object.
        manifest: The parsed ``clipper_model.json``.
        options: ``manifest["options"]``, the adapter's own settings.
        func: The deployer's ``func(model, inputs)``, or None.
        inputs / outputs: OIP tensor specs, declared by the deployer or derived
            from the framework (instance attributes shadowing ``Model``'s).
    """

    #: The adapter name a manifest must carry.
    adapter: ClassVar[str] = ""

    def __init__(self) -> None:
        self.model: Any = None
        self.manifest: dict[str, Any] = {}
        self.options: dict[str, Any] = {}
        self.func: Callable[..., Any] | None = None
        self.batch_input_type = "doubles"

    # -- what subclasses implement ------------------------------------------------

    def load_model(self, model_dir: Path) -> Any:
        """Load the framework model from ``model_dir`` (once, at start)."""
        raise NotImplementedError

    def predict_batch(self, batch: Any) -> Any:
        """Predict a whole batch in one framework call.

        ``batch`` is an ``(N, d)`` numpy array for numeric input types, a list of N
        ``str``/``bytes`` otherwise.  Returns N outputs (an array whose first
        dimension is N, or a list).
        """
        raise NotImplementedError

    def derive_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """Input and output specs that the framework knows (empty: unknown)."""
        return [], []

    def call_func(self, inputs: list[Any]) -> Sequence[Any]:
        """Call the deployer's ``func``; PySpark passes the session as well."""
        assert self.func is not None
        return self.func(self.model, inputs)  # type: ignore[no-any-return]

    # -- the Model interface ---------------------------------------------------

    def load(self) -> None:
        if not self.model_path:
            raise AdapterError(f"the {self.adapter} adapter needs --model-path DIR")
        model_dir = Path(self.model_path)
        self.manifest = read_manifest(model_dir)
        if self.manifest.get("adapter") != self.adapter:
            raise AdapterError(
                f"{model_dir} holds a {self.manifest.get('adapter')!r} model, "
                f"not a {self.adapter!r} one"
            )
        self.options = dict(self.manifest.get("options") or {})
        input_type = str(self.manifest.get("input_type") or "doubles")
        if input_type not in INPUT_TYPES:
            raise AdapterError(f"unknown input type {input_type!r} in the manifest")
        self.batch_input_type = input_type
        self.model = self.load_model(model_dir)
        func_file = self.manifest.get("func")
        if func_file:
            import cloudpickle

            with open(model_dir / func_file, "rb") as f:
                self.func = cloudpickle.load(f)
        self._set_specs()

    def predict(self, inputs: list[Any]) -> Sequence[Any]:
        if self.func is not None:
            return self.call_func(inputs)
        outputs = self.predict_batch(self.stack(inputs))
        if isinstance(outputs, np.ndarray) and outputs.dtype.kind in "OUS":
            return outputs.tolist()  # type: ignore[no-any-return]
        return outputs  # type: ignore[no-any-return]

    # -- helpers ------------------------------------------------------------------

    def stack(self, inputs: list[Any]) -> Any:
        """One batch object for the framework: an ``(N, d)`` array or a list."""
        if self.batch_input_type not in INPUT_DTYPES:
            return list(inputs)
        lengths = {len(x) for x in inputs}
        if len(lengths) > 1:
            raise ValueError(
                "the inputs of a batch must have the same length to be stacked into one"
                f" tensor; got lengths {sorted(lengths)}"
            )
        batch = np.stack(inputs)
        expected = self._feature_count()
        if expected is not None and batch.shape[1] != expected:
            raise ValueError(f"this model takes {expected} values per input, got {batch.shape[1]}")
        return batch

    def _feature_count(self) -> int | None:
        specs = list(getattr(self, "inputs", ()) or ())
        if len(specs) != 1 or len(specs[0].shape) != 2 or specs[0].shape[1] < 0:
            return None
        return int(specs[0].shape[1])

    def _set_specs(self) -> None:
        declared_in = self.manifest.get("inputs")
        declared_out = self.manifest.get("outputs")
        derived_in: list[TensorSpec] = []
        derived_out: list[TensorSpec] = []
        if self.func is not None:
            # The func, not the framework, takes the rows and makes the outputs:
            # the framework's specs (an ONNX graph's inputs ``a`` and ``b``) would
            # be refused.  It takes one tensor of rows of the input type; its
            # outputs are declared, or learned from its first answer.
            derived_in = self.default_input_specs(None)
        else:
            try:
                derived_in, derived_out = self.derive_specs()
            except Exception as exc:  # metadata is a convenience: never fail the load
                log.warning("could not derive tensor specs from the model: %s", exc)
        if len(derived_in) == 1 and self.batch_input_type in INPUT_DTYPES:
            # Clients send the container's input type; it is cast for the framework.
            spec = derived_in[0]
            derived_in = [TensorSpec(spec.name, input_datatype(self.batch_input_type), spec.shape)]
        self.inputs = (
            tuple(tensor_spec(s) for s in declared_in) if declared_in else tuple(derived_in)
        )
        self.outputs = (
            tuple(tensor_spec(s) for s in declared_out) if declared_out else tuple(derived_out)
        )
        if not self.outputs and self.func is None:
            self.outputs = tuple(self._probe_outputs())

    def _probe_outputs(self) -> list[TensorSpec]:
        """Output specs from one prediction on a row of zeros, when the width is known."""
        width = self._feature_count()
        dtype = INPUT_DTYPES.get(self.batch_input_type)
        if width is None or dtype is None:
            return []
        try:
            out = np.asarray(self.predict_batch(np.zeros((1, width), dtype=dtype)))
        except Exception as exc:
            log.info("no output spec: a probe prediction failed (%s)", exc)
            return []
        if out.ndim == 0:
            return []
        return [TensorSpec("output", oip_datatype(out.dtype), (-1, *out.shape[1:]))]

    def default_input_specs(self, width: int | None, name: str = "input") -> list[TensorSpec]:
        """One input of the container's input type: ``(-1, width)`` or ``(-1,)`` for text."""
        datatype = input_datatype(self.batch_input_type)
        if self.batch_input_type not in INPUT_DTYPES:
            return [TensorSpec(name, datatype, (-1,))]
        return [TensorSpec(name, datatype, (-1, -1 if width is None else int(width)))]


def shape_of(dims: Any) -> tuple[int, ...]:
    """A shape from a framework's dims, unknown (None, symbolic names) as -1."""
    out: list[int] = []
    for d in dims or ():
        try:
            out.append(-1 if d is None or isinstance(d, str) else int(d))
        except (TypeError, ValueError):
            out.append(-1)
    return tuple(out)
