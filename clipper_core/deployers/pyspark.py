"""Deploy fitted Spark MLlib models, served by a local SparkSession in the container."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from clipper_core.connection import ClipperConnection
from clipper_core.deployers.framework import default_progress, deploy_framework_model, pick_model
from clipper_core.errors import BadInput


def _call(obj: Any, getter: str) -> Any:
    fn = getattr(obj, getter, None)
    if fn is None:
        return None
    try:
        return fn()
    except Exception:  # a param without a value or default
        return None


def _describe(model: Any, input_type: str) -> dict[str, Any]:
    """Column names (and the width) that the model's first and last stages use."""
    stages = list(getattr(model, "stages", None) or [model])
    first, last = stages[0], stages[-1]
    found: dict[str, Any] = {}
    cols = _call(first, "getInputCols")
    if input_type in ("ints", "floats", "doubles") and cols:
        found["input_cols"] = list(cols)
    else:
        col = _call(first, "getInputCol")
        if col and input_type in ("strings", "bytes"):
            found["text_col"] = col
        features = _call(first, "getFeaturesCol") or (
            col if input_type not in ("strings", "bytes") else None
        )
        if features:
            found["features_col"] = features
        width = getattr(first, "numFeatures", None)
        if isinstance(width, int):
            found["input_width"] = width
    prediction = _call(last, "getPredictionCol") or _call(last, "getOutputCol")
    if prediction:
        found["prediction_col"] = prediction
    return found


def deploy_pyspark_model(
    clipper_conn: ClipperConnection,
    name: str,
    version: str | int,
    input_type: str,
    func: Callable[[Any, Any, list[Any]], Sequence[Any]] | None = None,
    model: Any = None,
    sc: Any = None,
    base_image: str | None = None,
    labels: list[str] | None = None,
    registry: str | None = None,
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: Sequence[str] | None = None,
    *,
    input_cols: Sequence[str] | None = None,
    features_col: str | None = None,
    text_col: str | None = None,
    prediction_col: str | None = None,
    spark_conf: dict[str, str] | None = None,
    requirements_file: str | os.PathLike[str] | None = None,
    inputs: Iterable[Any] | None = None,
    outputs: Iterable[Any] | None = None,
    progress: Callable[[str], None] | None = default_progress,
    **kwargs: Any,
) -> None:
    """Serve a fitted Spark MLlib model (a ``PipelineModel`` or any MLWritable model).

    Saved with ``model.write().save()`` (Spark's own format, a folder); the
    container starts a local SparkSession (``local[1]``, loopback, no UI; Java
    must be on its PATH or in ``JAVA_HOME``), loads it with ``<Class>.load``, and
    turns each batch into one DataFrame for one ``transform``:

    * numeric inputs: one row per input with the double columns ``input_cols``
      (taken from a first ``VectorAssembler`` stage when not given), or a single
      dense vector column ``features_col``;
    * strings: one string column ``text_col`` (the first stage's input column).

    The output is the ``prediction_col`` column (the last stage's).  With
    ``func``, ``func(spark, model, inputs)`` is called instead (Clipper's contract).

    Args:
        clipper_conn: The connection to the server.
        name: Model name.
        version: Model version.
        input_type: Clipper's input type.
        func: Optional ``func(spark, model, inputs) -> outputs``.
        model: The fitted model (``pyspark_model=`` works too).
        sc: Accepted for Clipper compatibility (the SparkContext); unused.
        base_image: Accepted for Clipper compatibility; ignored.
        labels: Model labels.
        registry: Accepted for Clipper compatibility; ignored.
        num_replicas: Replicas to start.
        batch_size: -1 adaptive, > 0 fixed (the cap of an adaptive ``controller``).
        pkgs_to_install: pip requirements for an environment of its own.
        input_cols: Names of the numeric input columns.
        features_col: Name of the vector column, when there are no input columns.
        text_col: Name of the string column.
        prediction_col: Name of the output column.
        spark_conf: Extra Spark settings of the container's session.
        requirements_file: More requirements, from a file.
        inputs: Declared OIP input specs.
        outputs: Declared OIP output specs.
        progress: Where the environment build's lines go.
        **kwargs: Model options (``cpus``, ``memory_limit_mb``, ``controller``, ...).
    """
    model = pick_model(model, kwargs, "pyspark_model")
    if not hasattr(model, "write") or not hasattr(type(model), "load"):
        raise BadInput(f"{type(model).__name__} is not a savable Spark ML model")
    cls = type(model)
    options: dict[str, Any] = _describe(model, input_type)
    given = {
        "input_cols": list(input_cols) if input_cols else None,
        "features_col": features_col,
        "text_col": text_col,
        "prediction_col": prediction_col,
    }
    options.update({k: v for k, v in given.items() if v})
    options.update(
        {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "dir": "spark_model",
            "name": name,
            "spark_conf": dict(spark_conf or {}),
        }
    )

    def save(folder: Path) -> dict[str, Any]:
        model.write().overwrite().save(str((folder / "spark_model").resolve()))
        return options

    deploy_framework_model(
        clipper_conn,
        name,
        version,
        input_type,
        adapter="pyspark",
        save=save,
        func=func,
        packages=[("pyspark", "present")],
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
