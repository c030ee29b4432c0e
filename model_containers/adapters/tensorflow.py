"""TensorFlow: a SavedModel directory, called through one of its signatures."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from model_containers.adapters.base import FrameworkModel, oip_datatype, shape_of
from model_containers.model import TensorSpec


def _spec(name: str, spec: Any) -> TensorSpec:
    return TensorSpec(name, oip_datatype(spec.dtype.as_numpy_dtype), shape_of(spec.shape.as_list()))


class TensorFlowModel(FrameworkModel):
    """Options: ``dir`` (``saved_model``), ``signature`` (``serving_default``),
    ``output`` (which output of the signature to return; the only one, or the
    first in name order, by default).

    Without a ``func`` the signature must take one tensor, fed the stacked batch.
    A ``func`` gets the object ``tf.saved_model.load`` returned.
    """

    adapter: ClassVar[str] = "tensorflow"
    platform: ClassVar[str] = "tensorflow_savedmodel"

    def load_model(self, model_dir: Path) -> Any:
        import tensorflow as tf

        loaded = tf.saved_model.load(str(model_dir / str(self.options.get("dir", "saved_model"))))
        name = str(self.options.get("signature") or "serving_default")
        self._fn = loaded.signatures.get(name) if hasattr(loaded, "signatures") else None
        if self._fn is None and self.manifest.get("func") is None:
            raise ValueError(f"the SavedModel has no signature {name!r}")
        if self._fn is not None:
            _args, kwargs = self._fn.structured_input_signature
            self._input_specs = dict(sorted(kwargs.items()))
            outputs = self._fn.structured_outputs
            self._output_specs = dict(sorted(outputs.items())) if isinstance(outputs, dict) else {}
            wanted = self.options.get("output")
            if wanted and wanted not in self._output_specs:
                known = list(self._output_specs)
                raise ValueError(f"signature {name!r} has no output {wanted!r}; it has {known}")
            self._output = wanted or next(iter(self._output_specs), None)
        return loaded

    def predict_batch(self, batch: Any) -> Any:
        import tensorflow as tf

        if len(self._input_specs) != 1:
            raise ValueError(
                f"the signature takes {len(self._input_specs)} inputs {list(self._input_specs)}:"
                " deploy it with a func(model, inputs) that builds them"
            )
        ((name, spec),) = self._input_specs.items()
        if isinstance(batch, list):
            tensor = tf.constant(batch, dtype=spec.dtype)
        else:
            tensor = tf.convert_to_tensor(np.asarray(batch, dtype=spec.dtype.as_numpy_dtype))
        out = self._fn(**{name: tensor})
        if isinstance(out, dict):
            out = out[self._output] if self._output is not None else next(iter(out.values()))
        return out.numpy()

    def derive_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        if self._fn is None:
            return [], []
        ins = [_spec(n, s) for n, s in self._input_specs.items()]
        outs = [_spec(n, s) for n, s in self._output_specs.items() if n == self._output]
        return ins, outs
