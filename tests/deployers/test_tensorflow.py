"""TensorFlow and Keras through the real path: a .keras file and a SavedModel."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [
    pytest.mark.heavy,
    # Keras on numpy 2 (its own code, not ours).
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from clipper_core.deployers import deploy_keras_model, deploy_tensorflow_model  # noqa: E402
from tests.deployers.conftest import endpoint, link, metadata, serve, specs  # noqa: E402
from tests.server.conftest import Running  # noqa: E402

RNG = np.random.default_rng(21)
QUERIES = RNG.normal(size=(24, 3))


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(1)
    x = RNG.normal(size=(128, 3)).astype(np.float32)
    y = (x @ np.array([[0.5], [-1.0], [2.0]], dtype=np.float32)).astype(np.float32)
    inputs = keras.Input(shape=(3,), name="readings")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    outputs = keras.layers.Dense(1, name="estimate")(hidden)
    net = keras.Model(inputs, outputs)
    net.compile(optimizer="adam", loss="mse")
    net.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return net


def test_keras_model(server: Running, model: keras.Model) -> None:
    endpoint(server, "keras")
    deploy_keras_model(server.conn, "keras", 1, "doubles", model=model)
    link(server, "keras")
    got = np.asarray(serve(server, "keras", QUERIES), dtype=np.float32)
    want = model.predict_on_batch(QUERIES.astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    meta = metadata(server, "keras")
    assert meta.platform == "keras"
    assert specs(meta.inputs) == [("readings", "FP64", (-1, 3))]
    assert specs(meta.outputs)[0][1:] == ("FP32", (-1, 1))


def test_tensorflow_saved_model(server: Running, model: keras.Model) -> None:
    endpoint(server, "tf-saved")
    deploy_tensorflow_model(server.conn, "tf-saved", 1, "doubles", model=model)
    link(server, "tf-saved")
    got = np.asarray(serve(server, "tf-saved", QUERIES), dtype=np.float32)
    want = model.predict_on_batch(QUERIES.astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    meta = metadata(server, "tf-saved")
    assert meta.platform == "tensorflow_savedmodel"
    ((_name, datatype, shape),) = specs(meta.inputs)
    assert (datatype, shape) == ("FP64", (-1, 3))
    assert specs(meta.outputs)[0][1:] == ("FP32", (-1, 1))
