"""XGBoost: a Booster or an sklearn-API model saved with ``save_model`` (UBJ/JSON)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from model_containers.adapters.base import FrameworkModel
from model_containers.model import TensorSpec


class XGBoostModel(FrameworkModel):
    """Options: ``file`` (``model.ubj``), ``class`` (``xgboost.core.Booster`` or an
    sklearn wrapper such as ``xgboost.sklearn.XGBClassifier``), ``method``
    (``predict`` by default; ``predict_proba`` for classifiers)."""

    adapter: ClassVar[str] = "xgboost"
    platform: ClassVar[str] = "xgboost"

    def load_model(self, model_dir: Path) -> Any:
        import xgboost as xgb

        path = str(model_dir / str(self.options.get("file", "model.ubj")))
        module_name, _, name = str(self.options.get("class", "xgboost.core.Booster")).rpartition(
            "."
        )
        cls = getattr(importlib.import_module(module_name or "xgboost"), name)
        if issubclass(cls, xgb.Booster):
            return xgb.Booster(model_file=path)
        model = cls()
        model.load_model(path)
        return model

    @property
    def booster(self) -> Any:
        get = getattr(self.model, "get_booster", None)
        return get() if get is not None else self.model

    def predict_batch(self, batch: Any) -> Any:
        import xgboost as xgb

        if isinstance(self.model, xgb.Booster):
            return np.asarray(self.model.inplace_predict(batch))
        return np.asarray(getattr(self.model, str(self.options.get("method", "predict")))(batch))

    def derive_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        return self.default_input_specs(int(self.booster.num_features())), []
