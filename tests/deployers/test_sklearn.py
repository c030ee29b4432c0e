"""scikit-learn through the real path: deployer -> server -> container (joblib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from clipper_core.deployers import deploy_sklearn_model
from clipper_core.errors import ClipperError
from tests.deployers.conftest import endpoint, link, metadata, serve, specs
from tests.server.conftest import Running

RNG = np.random.default_rng(7)
X = RNG.normal(size=(300, 4))
Y_CLASS = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1).astype(np.int64)


def test_classifier_labels_and_probabilities(server: Running) -> None:
    clf = LogisticRegression(max_iter=500).fit(X, Y_CLASS)
    endpoint(server, "sk-labels")
    deploy_sklearn_model(server.conn, "sk-labels", 1, "doubles", model=clf)
    link(server, "sk-labels")
    endpoint(server, "sk-proba")
    deploy_sklearn_model(server.conn, "sk-proba", 1, "doubles", model=clf, method="predict_proba")
    link(server, "sk-proba")

    queries = X[:40]
    assert serve(server, "sk-labels", queries) == clf.predict(queries).tolist()
    np.testing.assert_allclose(
        np.asarray(serve(server, "sk-proba", queries)), clf.predict_proba(queries), rtol=1e-12
    )

    meta = metadata(server, "sk-labels")
    assert meta.platform == "sklearn"
    assert specs(meta.inputs) == [("input", "FP64", (-1, 4))]
    assert specs(meta.outputs) == [("output", "INT64", (-1,))]
    assert specs(metadata(server, "sk-proba").outputs) == [("output", "FP64", (-1, 3))]


def test_pipeline_regression_and_wrong_width(server: Running) -> None:
    target = X @ np.array([1.5, -2.0, 0.25, 3.0]) + 0.1
    model = make_pipeline(StandardScaler(), Ridge(alpha=0.5)).fit(X, target)
    endpoint(server, "sk-ridge")
    deploy_sklearn_model(server.conn, "sk-ridge", 1, "doubles", model=model)
    link(server, "sk-ridge")
    queries = RNG.normal(size=(25, 4))
    np.testing.assert_allclose(
        serve(server, "sk-ridge", queries), model.predict(queries), rtol=1e-12
    )

    status, reply = server.client.predict("sk-ridge", {"input": [1.0, 2.0, 3.0]})
    assert status == 500, reply
    assert "takes 4 values per input, got 3" in reply["cause"]


def test_text_pipeline_on_strings(server: Running) -> None:
    words = ["cheap", "offer", "win", "meeting", "report", "lunch"]
    docs = [" ".join(RNG.choice(words[:3] if i % 2 else words[3:], size=4)) for i in range(60)]
    labels = ["spam" if i % 2 else "ham" for i in range(60)]
    model = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(docs, labels)
    endpoint(server, "sk-text", "strings")
    deploy_sklearn_model(server.conn, "sk-text", 1, "strings", model=model)
    link(server, "sk-text")
    queries = ["win cheap offer", "lunch meeting", "report win lunch report"]
    assert serve(server, "sk-text", queries) == model.predict(queries).tolist()
    assert specs(metadata(server, "sk-text").inputs) == [("input", "BYTES", (-1,))]


def test_func_and_declared_specs(server: Running) -> None:
    clf = LogisticRegression(max_iter=500).fit(X, Y_CLASS)

    def top_class_and_confidence(model, inputs):  # Clipper's func(model, inputs)
        proba = model.predict_proba(np.stack(inputs))
        return [
            f"{model.classes_[i]}:{p:.3f}"
            for i, p in zip(proba.argmax(1), proba.max(1), strict=True)
        ]

    endpoint(server, "sk-func")
    deploy_sklearn_model(
        server.conn,
        "sk-func",
        1,
        "doubles",
        top_class_and_confidence,
        clf,
        outputs=[{"name": "label", "datatype": "BYTES", "shape": [-1]}],
    )
    link(server, "sk-func")
    queries = X[:5]
    assert serve(server, "sk-func", queries) == top_class_and_confidence(clf, list(queries))
    assert specs(metadata(server, "sk-func").outputs) == [("label", "BYTES", (-1,))]


def test_one_framework_call_per_batch(server: Running, tmp_path: Path) -> None:
    from tests.deployers.helpers import RecordingRegression

    record = tmp_path / "batches.txt"
    model = RecordingRegression(record_to=str(record)).fit(X, X[:, 0] * 2)
    endpoint(server, "sk-batches")
    deploy_sklearn_model(
        server.conn,
        "sk-batches",
        1,
        "doubles",
        model=model,
        batch_size=16,
        batch_wait_micros=200_000,
    )
    link(server, "sk-batches")
    record.write_text("")  # forget the probe prediction made at load
    queries = X[:16]
    np.testing.assert_allclose(serve(server, "sk-batches", queries), queries[:, 0] * 2, atol=1e-9)
    sizes = [int(n) for n in record.read_text().split()]
    assert sum(sizes) == 16
    assert len(sizes) < 16 and max(sizes) > 1, sizes


def test_version_mismatch_stops_the_container_with_a_clear_error(
    server: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    clf = LogisticRegression(max_iter=500).fit(X, Y_CLASS)
    import clipper_core.deployers.framework as framework

    real = framework.deploy_environment

    def pretend_older_sklearn(packages, *, pickled_code):
        env = real(packages, pickled_code=pickled_code)
        for pkg in env["packages"]:
            if pkg["module"] == "sklearn":
                pkg["version"] = "0.20.4"
        return env

    monkeypatch.setattr(framework, "deploy_environment", pretend_older_sklearn)
    with pytest.raises(ClipperError) as err:
        deploy_sklearn_model(server.conn, "sk-old", 1, "doubles", model=clf)
    message = str(err.value)
    assert "0.20.4 at deploy time" in message, message
    assert "scikit-learn" in message and "pip install scikit-learn==0.20.4" in message
    assert server.conn.get_model_info("sk-old", 1) is None


def test_metadata_reaches_the_open_inference_protocol(server: Running) -> None:
    pytest.importorskip("clipper_core.oip")
    import json
    import urllib.request

    target = X @ np.array([1.0, 2.0, 3.0, 4.0])
    deploy_sklearn_model(server.conn, "sk-oip", 1, "doubles", model=Ridge().fit(X, target))
    with urllib.request.urlopen(f"{server.bg.query_url}/v2/models/sk-oip", timeout=30) as resp:
        meta = json.loads(resp.read())
    assert meta["platform"] == "sklearn"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP64", "shape": [-1]}]


def test_the_same_model_deployed_again_is_unchanged(server: Running) -> None:
    # A re-run script saves the model again: its bundle used to carry the files'
    # times and owners, so its digest changed and the deploy was refused as new
    # code under the same version.
    clf = LogisticRegression(max_iter=500).fit(X, Y_CLASS)
    deploy_sklearn_model(server.conn, "sk-again", 1, "doubles", model=clf)
    deploy_sklearn_model(server.conn, "sk-again", 1, "doubles", model=clf)  # no error
    assert server.conn.get_all_models().count("sk-again:1") == 1


def test_a_class_of_the_script_itself_is_refused_in_one_line(
    server: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    # joblib stores classes by name: the container cannot import __main__'s, and
    # every replica failed with a pickle traceback (a 500 after a start).
    import sys

    from sklearn.base import BaseEstimator, TransformerMixin

    def transform(self: Any, values: Any) -> Any:
        return 2 * values

    doubler = type(
        "Doubler",
        (BaseEstimator, TransformerMixin),
        {"__module__": "__main__", "fit": lambda self, *_: self, "transform": transform},
    )
    monkeypatch.setattr(sys.modules["__main__"], "Doubler", doubler, raising=False)
    model = make_pipeline(doubler(), LogisticRegression(max_iter=500)).fit(X, Y_CLASS)
    with pytest.raises(ClipperError, match=r"Doubler is defined in the script itself"):
        deploy_sklearn_model(server.conn, "sk-main", 1, "doubles", model=model)
    assert "sk-main:1" not in server.conn.get_all_models()
