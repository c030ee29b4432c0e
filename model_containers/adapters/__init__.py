"""Framework adapters: ``Model`` subclasses that load a model saved in its
framework's own format and predict whole batches with one framework call.

The container selects one with ``--adapter NAME --model-path DIR``; ``DIR`` holds
what a ``clipper_core`` deployer saved (``clipper_model.json`` plus the framework's
files, see :mod:`model_containers.adapters.base`).  Each adapter imports its
framework only when it loads, so this package stays light.
"""

from __future__ import annotations

import importlib

from model_containers.model import Model

#: Adapter name -> ``module:class``.
ADAPTERS: dict[str, str] = {
    "sklearn": "model_containers.adapters.sklearn:SklearnModel",
    "pytorch": "model_containers.adapters.pytorch:PyTorchModel",
    "onnx": "model_containers.adapters.onnx:OnnxModel",
    "xgboost": "model_containers.adapters.xgboost:XGBoostModel",
    "pyspark": "model_containers.adapters.pyspark:PySparkModel",
    "tensorflow": "model_containers.adapters.tensorflow:TensorFlowModel",
    "keras": "model_containers.adapters.keras:KerasModel",
}


def adapter_class(name: str) -> type[Model]:
    """The adapter class registered under ``name``.

    Raises:
        KeyError: No adapter has that name.
    """
    try:
        target = ADAPTERS[name]
    except KeyError:
        raise KeyError(
            f"unknown adapter {name!r}; known adapters: {', '.join(sorted(ADAPTERS))}"
        ) from None
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    assert isinstance(cls, type) and issubclass(cls, Model)
    return cls


__all__ = ["ADAPTERS", "adapter_class"]
