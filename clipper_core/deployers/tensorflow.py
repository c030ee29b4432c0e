"""Deploy TensorFlow SavedModels and Keras models."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from clipper_core.connection import ClipperConnection
from clipper_core.deployers.framework import default_progress, deploy_framework_model, pick_model
from clipper_core.errors import BadInput


def deploy_tensorflow_model(
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
    signature: str = "serving_default",
    output: str | None = None,
    requirements_file: str | os.PathLike[str] | None = None,
    inputs: Iterable[Any] | None = None,
    outputs: Iterable[Any] | None = None,
    progress: Callable[[str], None] | None = default_progress,
    **kwargs: Any,
) -> None:
    """Serve a TensorFlow SavedModel through one of its signatures.

    ``model`` is the path of a SavedModel folder, a Keras model (exported with
    ``model.export``, which writes a ``serving_default`` signature), or a
    ``tf.Module`` with a ``tf.function`` signature (``tf.saved_model.save``).
    Without ``func``, the signature must take one tensor: each batch is stacked,
    cast to its dtype, and one call returns ``output`` (the signature's only
    output, or the first by name).  With ``func``, ``func(loaded, inputs)`` gets
    what ``tf.saved_model.load`` returned.  Names, dtypes and shapes come from the
    signature.

    Args:
        clipper_conn: The connection to the server.
        name: Model name.
        version: Model version.
        input_type: Clipper's input type.
        func: Optional ``func(loaded, inputs) -> outputs``.
        model: A SavedModel path, Keras model or ``tf.Module``
            (``tf_sess_or_saved_model_path=`` works too).
        base_image: Accepted for Clipper compatibility; ignored.
        labels: Model labels.
        registry: Accepted for Clipper compatibility; ignored.
        num_replicas: Replicas to start.
        batch_size: -1 adaptive, > 0 fixed (the cap of an adaptive ``controller``).
        pkgs_to_install: pip requirements for an environment of its own.
        signature: The signature to call.
        output: The signature output to return.
        requirements_file: More requirements, from a file.
        inputs: Declared OIP input specs.
        outputs: Declared OIP output specs.
        progress: Where the environment build's lines go.
        **kwargs: Model options (``cpus``, ``memory_limit_mb``, ``controller``, ...).
    """
    model = pick_model(model, kwargs, "tf_sess_or_saved_model_path")

    def save(folder: Path) -> dict[str, Any]:
        target = folder / "saved_model"
        if isinstance(model, (str, os.PathLike)):
            if not (Path(model) / "saved_model.pb").is_file():
                raise BadInput(f"{model} is not a SavedModel folder (no saved_model.pb)")
            shutil.copytree(model, target)
        elif hasattr(model, "export") and hasattr(model, "predict_on_batch"):
            model.export(str(target), verbose=False)  # a Keras 3 model
        else:
            import tensorflow as tf

            tf.saved_model.save(model, str(target))
        return {"dir": "saved_model", "signature": signature, "output": output}

    deploy_framework_model(
        clipper_conn,
        name,
        version,
        input_type,
        adapter="tensorflow",
        save=save,
        func=func,
        packages=[("tensorflow", "present")],
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


def deploy_keras_model(
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
    requirements_file: str | os.PathLike[str] | None = None,
    inputs: Iterable[Any] | None = None,
    outputs: Iterable[Any] | None = None,
    progress: Callable[[str], None] | None = default_progress,
    **kwargs: Any,
) -> None:
    """Serve a Keras 3 model, saved as a ``.keras`` file.

    ``model`` is a ``keras.Model`` or the path of a ``.keras`` file.  The
    container loads it with ``keras.saving.load_model`` (on the backend it was
    saved with, unless ``KERAS_BACKEND`` says otherwise) and predicts each
    stacked batch with one ``predict_on_batch``.  With ``func``,
    ``func(model, inputs)`` is called instead.  Names, dtypes and shapes come
    from ``model.inputs`` / ``model.outputs``.

    Args:
        clipper_conn: The connection to the server.
        name: Model name.
        version: Model version.
        input_type: Clipper's input type.
        func: Optional ``func(model, inputs) -> outputs``.
        model: A Keras model or ``.keras`` path (``model_path_or_object=`` too).
        base_image: Accepted for Clipper compatibility; ignored.
        labels: Model labels.
        registry: Accepted for Clipper compatibility; ignored.
        num_replicas: Replicas to start.
        batch_size: -1 adaptive, > 0 fixed (the cap of an adaptive ``controller``).
        pkgs_to_install: pip requirements for an environment of its own.
        requirements_file: More requirements, from a file.
        inputs: Declared OIP input specs.
        outputs: Declared OIP output specs.
        progress: Where the environment build's lines go.
        **kwargs: Model options (``cpus``, ``memory_limit_mb``, ``controller``, ...).
    """
    model = pick_model(model, kwargs, "model_path_or_object")
    import keras

    backend = keras.backend.backend()

    def save(folder: Path) -> dict[str, Any]:
        target = folder / "model.keras"
        if isinstance(model, (str, os.PathLike)):
            if not str(model).endswith(".keras") or not Path(model).is_file():
                raise BadInput(f"{model} is not a .keras file")
            shutil.copyfile(model, target)
        elif hasattr(model, "save"):
            model.save(str(target))
        else:
            raise BadInput(f"model must be a keras.Model or a .keras path, not {type(model)}")
        return {"file": "model.keras", "backend": backend}

    backend_module = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}.get(backend)
    packages = [("keras", "present")]
    if backend_module:
        packages.append((backend_module, "present"))
    deploy_framework_model(
        clipper_conn,
        name,
        version,
        input_type,
        adapter="keras",
        save=save,
        func=func,
        packages=packages,
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
