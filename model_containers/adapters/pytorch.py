"""PyTorch: a module saved as a state dict (+ its architecture), TorchScript or
``torch.export`` program, run on the CPU under ``torch.inference_mode``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from model_containers.adapters.base import FrameworkModel


class PyTorchModel(FrameworkModel):
    """Options: ``format`` (``state_dict`` | ``torchscript`` | ``export``), ``file``
    (the weights, TorchScript or ``.pt2`` file), ``module`` (``state_dict`` only: the
    cloudpickled module skeleton, whose tensors live on the ``meta`` device),
    ``dtype`` (the floating dtype the model computes in, e.g. ``float32``: float
    inputs are cast to it), ``num_threads`` (``torch.set_num_threads``, 0 = default).
    """

    adapter: ClassVar[str] = "pytorch"
    platform: ClassVar[str] = "pytorch_libtorch"

    def load_model(self, model_dir: Path) -> Any:
        import torch

        threads = int(self.options.get("num_threads") or 0)
        if threads:
            torch.set_num_threads(threads)
        fmt = str(self.options.get("format", "state_dict"))
        path = model_dir / str(self.options.get("file", "model.pt"))
        if fmt == "torchscript":
            module = torch.jit.load(str(path), map_location="cpu")
        elif fmt == "export":
            module = torch.export.load(str(path)).module()
        elif fmt == "state_dict":
            import cloudpickle

            with open(model_dir / str(self.options.get("module", "module.pkl")), "rb") as f:
                skeleton = cloudpickle.load(f)
            module = skeleton.to_empty(device="cpu")
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            module.load_state_dict(state)
        else:
            raise ValueError(f"unknown PyTorch format {fmt!r}")
        if hasattr(module, "eval") and fmt != "export":
            module.eval()
        dtype = self.options.get("dtype")
        self._float_dtype = np.dtype(str(dtype)) if dtype else None
        return module

    def predict_batch(self, batch: Any) -> Any:
        import torch

        if self._float_dtype is not None and batch.dtype.kind == "f":
            batch = batch.astype(self._float_dtype, copy=False)
        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(batch)))
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.detach().cpu().numpy()

    def derive_specs(self) -> tuple[list[Any], list[Any]]:
        width = self.options.get("input_width")
        return self.default_input_specs(None if width is None else int(width)), []
