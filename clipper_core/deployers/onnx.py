"""Deploy ONNX models, run by ONNX Runtime."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from clipper_core.connection import ClipperConnection
from clipper_core.deployers.framework import default_progress, deploy_framework_model, pick_model
from clipper_core.errors import BadInput


def external_data_files(graph_file: Path) -> list[str]:
    """The external data files an ONNX graph file names (relative paths inside
    its folder); none when the ``onnx`` package is not installed to read it."""
    try:
        import onnx
        from onnx import external_data_helper as ext
    except ImportError:
        return []
    proto = onnx.load(str(graph_file), load_external_data=False)
    found: set[str] = set()
    for tensor in ext._get_all_tensors(proto):
        if ext.uses_external_data(tensor):
            location = ext.ExternalDataInfo(tensor).location
            resolved = (graph_file.parent / location).resolve()
            if not resolved.is_relative_to(graph_file.parent.resolve()) or not resolved.is_file():
                raise BadInput(
                    f"{graph_file}: external data {location!r} is not a file in its folder"
                )
            found.add(location)
    return sorted(found)


def deploy_onnx_model(
    clipper_conn: ClipperConnection,
    name: str,
    version: str | int,
    input_type: str,
    func: Callable[[Any, list[Any]], Sequence[Any]] | None = None,
    model: Any = None,
    base_image: str | None = None,
    labels: list[str] | None = None,
    registry: str | None = None,
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: Sequence[str] | None = None,
    *,
    output: str | None = None,
    intra_op_threads: int = 0,
    requirements_file: str | os.PathLike[str] | None = None,
    inputs: Iterable[Any] | None = None,
    outputs: Iterable[Any] | None = None,
    progress: Callable[[str], None] | None = default_progress,
    **kwargs: Any,
) -> None:
    """Serve an ONNX model with ONNX Runtime (CPU execution provider).

    ``model`` is an ``onnx.ModelProto``, the bytes of a ``.onnx`` file, or its
    path.  Without ``func``, the graph must have one input: each batch is stacked
    into one ``(N, d)`` tensor, cast to the input's element type, and one
    ``session.run`` returns ``output`` (the first output by default).  With
    ``func``, ``func(session, inputs)`` is called with the
    ``onnxruntime.InferenceSession``.  The OIP metadata says what the model takes
    and returns: without ``func``, the graph's names and shapes (its input in
    ``input_type``'s datatype, cast for the graph); with ``func``, what the func
    takes -- one input ``input`` of rows of ``input_type`` -- and one output
    ``output`` learned from its first answer, unless ``inputs``/``outputs``
    declare them.

    Args:
        clipper_conn: The connection to the server.
        name: Model name.
        version: Model version.
        input_type: Clipper's input type.
        func: Optional ``func(session, inputs) -> outputs``.
        model: ``onnx.ModelProto``, bytes, or a path to a ``.onnx`` file.
        base_image: Accepted for Clipper compatibility; ignored.
        labels: Model labels.
        registry: Accepted for Clipper compatibility; ignored.
        num_replicas: Replicas to start.
        batch_size: -1 adaptive, > 0 fixed (the cap of an adaptive ``controller``).
        pkgs_to_install: pip requirements for an environment of its own
            (onnxruntime is pinned to this version unless named).
        output: Name of the graph output to return.
        intra_op_threads: ONNX Runtime's intra-op threads (0: its default).
        requirements_file: More requirements, from a file.
        inputs: Declared OIP input specs (default: from the graph).
        outputs: Declared OIP output specs (default: from the graph).
        progress: Where the environment build's lines go.
        **kwargs: Model options (``cpus``, ``memory_limit_mb``, ``controller``, ...).
    """
    model = pick_model(model, kwargs, "onnx_model")

    def save(folder: Path) -> dict[str, Any]:
        path = folder / "model.onnx"
        if isinstance(model, (bytes, bytearray, memoryview)):
            path.write_bytes(bytes(model))
        elif isinstance(model, (str, os.PathLike)):
            if not Path(model).is_file():
                raise BadInput(f"{model} is not an ONNX file")
            shutil.copyfile(model, path)
            for location in external_data_files(Path(model)):
                # Weights kept beside the graph (models over 2 GB must): they go
                # along, under the same relative names.
                target = folder / location
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(model).parent / location, target)
        elif hasattr(model, "SerializeToString"):
            path.write_bytes(model.SerializeToString())
        else:
            raise BadInput(
                f"model must be an onnx.ModelProto, bytes or a path, not {type(model).__name__}"
            )
        return {"file": "model.onnx", "output": output, "intra_op_threads": intra_op_threads}

    deploy_framework_model(
        clipper_conn,
        name,
        version,
        input_type,
        adapter="onnx",
        save=save,
        func=func,
        packages=[("onnxruntime", "present")],
        inputs=inputs,
        outputs=outputs,
        labels=labels,
        num_replicas=num_replicas,
        batch_size=batch_size,
        pkgs_to_install=pkgs_to_install,
        requirements_file=requirements_file,
        progress=progress,
        **kwargs,
    )
