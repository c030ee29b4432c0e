"""PySpark: a fitted Spark MLlib model (a ``PipelineModel`` or any MLWritable
model) served by a local SparkSession inside the container."""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from model_containers.adapters.base import FrameworkModel
from model_containers.model import TensorSpec


class PySparkModel(FrameworkModel):
    """Options: ``dir`` (``spark_model``, what ``model.write().save()`` wrote),
    ``class`` (e.g. ``pyspark.ml.pipeline.PipelineModel``), ``input_cols`` (numeric
    inputs become one row with these double columns) or ``features_col``
    (``features``: one dense vector column), ``text_col`` (strings inputs),
    ``prediction_col`` (``prediction``), ``spark_conf`` (extra settings).

    A ``func`` is called as ``func(spark, model, inputs)`` (Clipper's contract).
    """

    adapter: ClassVar[str] = "pyspark"
    platform: ClassVar[str] = "pyspark_mllib"

    def load_model(self, model_dir: Path) -> Any:
        # Loopback only: a container must not depend on the host's name resolving.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        from pyspark.sql import SparkSession

        builder = (
            SparkSession.builder.master(str(self.options.get("master", "local[1]")))
            .appName(f"clipper-{self.options.get('name', 'model')}")
            .config("spark.ui.enabled", "false")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.sql.shuffle.partitions", "1")
            .config("spark.ui.showConsoleProgress", "false")
        )
        for key, value in (self.options.get("spark_conf") or {}).items():
            builder = builder.config(str(key), str(value))
        self.spark = builder.getOrCreate()
        self.spark.sparkContext.setLogLevel("ERROR")
        module_name, _, name = str(
            self.options.get("class", "pyspark.ml.pipeline.PipelineModel")
        ).rpartition(".")
        cls = getattr(importlib.import_module(module_name), name)
        return cls.load(str(model_dir / str(self.options.get("dir", "spark_model"))))

    def call_func(self, inputs: list[Any]) -> Sequence[Any]:
        assert self.func is not None
        return self.func(self.spark, self.model, inputs)  # type: ignore[no-any-return]

    def frame(self, batch: Any) -> Any:
        """The batch as one Spark DataFrame (rows in input order)."""
        from pyspark.sql.types import DoubleType, StringType, StructField, StructType

        if self.batch_input_type not in ("ints", "floats", "doubles"):
            col = str(self.options.get("text_col") or "text")
            schema = StructType([StructField(col, StringType(), False)])
            rows = [
                (x if isinstance(x, str) else bytes(x).decode("utf-8", "replace"),) for x in batch
            ]
            return self.spark.createDataFrame(rows, schema)
        cols = self.options.get("input_cols")
        values = np.asarray(batch, dtype=np.float64)
        if cols:
            if values.shape[1] != len(cols):
                raise ValueError(
                    f"this model takes {len(cols)} values per input ({', '.join(cols)}),"
                    f" got {values.shape[1]}"
                )
            schema = StructType([StructField(str(c), DoubleType(), False) for c in cols])
            return self.spark.createDataFrame(values.tolist(), schema)
        from pyspark.ml.linalg import Vectors, VectorUDT

        col = str(self.options.get("features_col") or "features")
        schema = StructType([StructField(col, VectorUDT(), False)])
        return self.spark.createDataFrame([(Vectors.dense(row),) for row in values], schema)

    def predict_batch(self, batch: Any) -> Any:
        col = str(self.options.get("prediction_col") or "prediction")
        # A narrow transformation of a local collection: collect() keeps row order.
        rows = self.model.transform(self.frame(batch)).select(col).collect()
        values = [r[0] for r in rows]
        if values and hasattr(values[0], "toArray"):
            return np.stack([v.toArray() for v in values])
        return np.asarray(values)

    def derive_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        cols = self.options.get("input_cols")
        width = len(cols) if cols else self.options.get("input_width")
        return self.default_input_specs(None if width is None else int(width)), []
