"""ONNX: a ``.onnx`` file run by ONNX Runtime on the CPU."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from model_containers.adapters.base import FrameworkModel, oip_datatype, shape_of
from model_containers.model import TensorSpec

# ONNX Runtime's type strings -> numpy dtypes.
_ORT_DTYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


def _datatype(ort_type: str) -> str:
    dtype = _ORT_DTYPES.get(ort_type)
    return "BYTES" if dtype is None or dtype is np.object_ else oip_datatype(dtype)


class OnnxModel(FrameworkModel):
    """Options: ``file`` (``model.onnx``), ``output`` (which output to return; the
    first by default), ``intra_op_threads`` (ONNX Runtime's pool, 0 = its default).

    Without a ``func`` a graph of one input is fed the stacked batch cast to the
    input's element type; a graph of several inputs answers OIP requests only,
    which name its inputs (Clipper's REST queries need a ``func``).
    """

    adapter: ClassVar[str] = "onnx"
    platform: ClassVar[str] = "onnxruntime_onnx"

    def load_model(self, model_dir: Path) -> Any:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        threads = int(self.options.get("intra_op_threads") or 0)
        if threads:
            opts.intra_op_num_threads = threads
        session = ort.InferenceSession(
            str(model_dir / str(self.options.get("file", "model.onnx"))),
            sess_options=opts,
            providers=["CPUExecutionProvider"],
        )
        graph_inputs = session.get_inputs()
        self._input = graph_inputs[0] if len(graph_inputs) == 1 else None
        self._input_dtype = _ORT_DTYPES.get(self._input.type) if self._input else None
        wanted = self.options.get("output")
        names = [o.name for o in session.get_outputs()]
        if wanted and wanted not in names:
            raise ValueError(f"the ONNX graph has no output {wanted!r}; it has {names}")
        self._output = wanted or names[0]
        return session

    def predict_batch(self, batch: Any) -> Any:
        if self._input is None:
            names = [i.name for i in self.model.get_inputs()]
            raise ValueError(
                f"the ONNX graph has {len(names)} inputs {names}: query it over OIP,"
                " naming them, or deploy it with a func(session, inputs) that builds the feed"
            )
        if self._input_dtype is np.object_:
            feed = np.asarray(batch, dtype=object).reshape(len(batch), -1)
            if len(self._input.shape) == 1:
                feed = feed.reshape(-1)
        else:
            feed = np.asarray(batch, dtype=self._input_dtype)
        return self.model.run([self._output], {self._input.name: feed})[0]

    def predict_tensors(self, inputs: Mapping[str, np.ndarray]) -> Mapping[str, Any]:
        """A graph of several inputs, deployed without a func, takes OIP requests
        as its metadata advertises them: its inputs by name (the server checked
        their datatypes and shapes).  Otherwise rows, as every model."""
        if self.func is not None or self._input is not None:
            return super().predict_tensors(inputs)
        feed = {i.name: inputs[i.name] for i in self.model.get_inputs()}
        return {self._output: self.model.run([self._output], feed)[0]}

    def derive_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        ins = [
            TensorSpec(i.name, _datatype(i.type), shape_of(i.shape))
            for i in self.model.get_inputs()
        ]
        outs = [
            TensorSpec(o.name, _datatype(o.type), shape_of(o.shape))
            for o in self.model.get_outputs()
            if o.name == self._output
        ]
        return ins, outs
