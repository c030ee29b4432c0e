"""XGBoost through the real path: models saved with save_model (UBJ and JSON)."""

from __future__ import annotations

import numpy as np
import pytest

xgb = pytest.importorskip("xgboost")
pytest.importorskip("sklearn")

from clipper_core.deployers import deploy_xgboost_model  # noqa: E402
from tests.deployers.conftest import endpoint, link, metadata, serve, specs  # noqa: E402
from tests.server.conftest import Running  # noqa: E402

RNG = np.random.default_rng(5)
X = RNG.normal(size=(400, 6))
Y = (X[:, 0] * X[:, 1] + X[:, 2] > 0).astype(np.int64)


def test_sklearn_api_classifier(server: Running) -> None:
    clf = xgb.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1).fit(X, Y)
    endpoint(server, "xgb-labels")
    deploy_xgboost_model(server.conn, "xgb-labels", 1, "doubles", model=clf)
    link(server, "xgb-labels")
    endpoint(server, "xgb-proba")
    deploy_xgboost_model(
        server.conn,
        "xgb-proba",
        1,
        "doubles",
        model=clf,
        method="predict_proba",
        model_format="json",
    )
    link(server, "xgb-proba")
    queries = RNG.normal(size=(50, 6))
    assert serve(server, "xgb-labels", queries) == clf.predict(queries).tolist()
    got = np.asarray(serve(server, "xgb-proba", queries), dtype=np.float32)
    np.testing.assert_array_equal(got, clf.predict_proba(queries))
    meta = metadata(server, "xgb-proba")
    assert meta.platform == "xgboost"
    assert specs(meta.inputs) == [("input", "FP64", (-1, 6))]
    assert specs(meta.outputs) == [("output", "FP32", (-1, 2))]


def test_a_subclass_of_the_script_itself_is_served_as_its_xgboost_class(
    server: Running,
) -> None:
    # The container imported the saved class by name: a subclass defined in the
    # script (__main__) could not be, and every replica failed to load.
    mine = type("MyXGB", (xgb.XGBClassifier,), {"__module__": "__main__"})
    clf = mine(n_estimators=10, max_depth=3, n_jobs=1).fit(X, Y)
    endpoint(server, "xgb-mine")
    deploy_xgboost_model(server.conn, "xgb-mine", 1, "doubles", model=clf)
    link(server, "xgb-mine")
    queries = RNG.normal(size=(20, 6))
    assert serve(server, "xgb-mine", queries) == clf.predict(queries).tolist()


def test_booster_inplace_predict(server: Running) -> None:
    target = X[:, 0] * 2 - X[:, 3]
    booster = xgb.train(
        {"max_depth": 3, "nthread": 1, "objective": "reg:squarederror"},
        xgb.DMatrix(X, label=target),
        num_boost_round=15,
    )
    endpoint(server, "xgb-booster")
    deploy_xgboost_model(server.conn, "xgb-booster", 1, "doubles", model=booster)
    link(server, "xgb-booster")
    queries = RNG.normal(size=(40, 6))
    got = np.asarray(serve(server, "xgb-booster", queries), dtype=np.float32)
    np.testing.assert_array_equal(got, booster.inplace_predict(queries))
    assert specs(metadata(server, "xgb-booster").outputs) == [("output", "FP32", (-1,))]
