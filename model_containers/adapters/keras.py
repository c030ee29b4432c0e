"""Keras 3: a model saved as a ``.keras`` file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from model_containers.adapters.base import FrameworkModel, oip_datatype, shape_of
from model_containers.model import TensorSpec


def _spec(tensor: Any, fallback: str) -> TensorSpec:
    name = str(getattr(tensor, "name", "") or fallback)
    return TensorSpec(name, oip_datatype(np.dtype(str(tensor.dtype))), shape_of(tensor.shape))


class KerasModel(FrameworkModel):
    """Options: ``file`` (``model.keras``), ``backend`` (the Keras backend it was
    saved with; set as ``KERAS_BACKEND`` unless the environment sets one).

    A ``func`` is called as ``func(model, inputs)``.
    """

    adapter: ClassVar[str] = "keras"
    platform: ClassVar[str] = "keras"

    def load_model(self, model_dir: Path) -> Any:
        backend = self.options.get("backend")
        if backend:
            os.environ.setdefault("KERAS_BACKEND", str(backend))
        import keras

        model = keras.saving.load_model(
            str(model_dir / str(self.options.get("file", "model.keras")))
        )
        inputs = list(getattr(model, "inputs", None) or [])
        self._input_dtype = np.dtype(str(inputs[0].dtype)) if len(inputs) == 1 else None
        return model

    def predict_batch(self, batch: Any) -> Any:
        if self._input_dtype is not None and not isinstance(batch, list):
            batch = np.asarray(batch, dtype=self._input_dtype)
        out = self.model.predict_on_batch(batch)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return np.asarray(out)

    def derive_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        ins = [
            _spec(t, f"input_{i}") for i, t in enumerate(getattr(self.model, "inputs", []) or [])
        ]
        outs = [
            _spec(t, f"output_{i}") for i, t in enumerate(getattr(self.model, "outputs", []) or [])
        ]
        return ins, outs[:1]
