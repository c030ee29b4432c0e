"""PySpark through the real path: a PipelineModel served by the container's own
local SparkSession (Java from the machine)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import numpy as np
import pytest

# A JVM per container, and Spark jobs to load the model: minutes on a busy
# 2-core machine.
pytestmark = [pytest.mark.heavy, pytest.mark.timeout(900)]
SERVER_SETTINGS = {"replica_start_timeout": 600.0, "batch_timeout": 300.0}
SLO = 300_000_000
pytest.importorskip("pyspark")
if shutil.which("java") is None:
    pytest.skip("Spark needs java on the PATH", allow_module_level=True)

from pyspark.ml import Pipeline  # noqa: E402
from pyspark.ml.classification import LogisticRegression  # noqa: E402
from pyspark.ml.feature import VectorAssembler  # noqa: E402
from pyspark.ml.regression import LinearRegression  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402

from clipper_core.deployers import deploy_pyspark_model  # noqa: E402
from tests.deployers.conftest import endpoint, link, metadata, serve, specs  # noqa: E402
from tests.server.conftest import Running  # noqa: E402

RNG = np.random.default_rng(17)
COLS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    session = (
        SparkSession.builder.master("local[1]")
        .appName("clipper-test")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


def test_pipeline_model(server: Running, spark: SparkSession) -> None:
    x = RNG.normal(size=(200, 3))
    label = ((x[:, 0] - x[:, 2]) > 0).astype(float)
    train = spark.createDataFrame(
        [(*map(float, r), float(y)) for r, y in zip(x, label, strict=True)], [*COLS, "label"]
    )
    model = Pipeline(
        stages=[VectorAssembler(inputCols=COLS, outputCol="features"), LogisticRegression()]
    ).fit(train)

    endpoint(server, "spark-pipeline", slo_micros=SLO)
    deploy_pyspark_model(server.conn, "spark-pipeline", 1, "doubles", model=model)
    link(server, "spark-pipeline")

    queries = RNG.normal(size=(30, 3))
    frame = spark.createDataFrame([tuple(map(float, r)) for r in queries], COLS)
    want = [r.prediction for r in model.transform(frame).select("prediction").collect()]
    assert serve(server, "spark-pipeline", queries, timeout=300) == want
    meta = metadata(server, "spark-pipeline")
    assert meta.platform == "pyspark_mllib"
    assert specs(meta.inputs) == [("input", "FP64", (-1, 3))]
    assert specs(meta.outputs) == [("output", "FP64", (-1,))]


def test_model_on_a_vector_column_with_func(server: Running, spark: SparkSession) -> None:
    from pyspark.ml.linalg import Vectors

    x = RNG.normal(size=(100, 2))
    y = x @ np.array([3.0, -1.0]) + 0.5
    train = spark.createDataFrame(
        [(Vectors.dense(r), float(t)) for r, t in zip(x, y, strict=True)], ["features", "label"]
    )
    model = LinearRegression().fit(train)

    def rounded(spark, model, inputs):  # Clipper's func(spark, model, inputs)
        df = spark.createDataFrame([(Vectors.dense(v),) for v in inputs], ["features"])
        return [round(r.prediction, 6) for r in model.transform(df).collect()]

    endpoint(server, "spark-func", slo_micros=SLO)
    deploy_pyspark_model(server.conn, "spark-func", 1, "doubles", rounded, model)
    link(server, "spark-func")
    queries = RNG.normal(size=(5, 2))
    assert serve(server, "spark-func", queries, timeout=300) == rounded(spark, model, list(queries))
