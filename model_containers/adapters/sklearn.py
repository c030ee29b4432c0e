"""scikit-learn: an estimator or pipeline saved with joblib (or skops)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from model_containers.adapters.base import FrameworkModel
from model_containers.model import TensorSpec


class SklearnModel(FrameworkModel):
    """Options: ``file`` (``model.joblib``), ``format`` (``joblib`` | ``skops``),
    ``method`` (``predict``, ``predict_proba``, ``decision_function``, ``transform``)."""

    adapter: ClassVar[str] = "sklearn"
    platform: ClassVar[str] = "sklearn"

    def load_model(self, model_dir: Path) -> Any:
        path = model_dir / str(self.options.get("file", "model.joblib"))
        if self.options.get("format") == "skops":
            import skops.io as sio

            return sio.load(path, trusted=sio.get_untrusted_types(file=path))
        import joblib

        return joblib.load(path)

    def predict_batch(self, batch: Any) -> Any:
        method = getattr(self.model, str(self.options.get("method", "predict")))
        return np.asarray(method(batch))

    def derive_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        width = getattr(self.model, "n_features_in_", None)
        return self.default_input_specs(None if width is None else int(width)), []
