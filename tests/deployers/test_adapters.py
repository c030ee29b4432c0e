"""The adapters stay light until they load, and the container CLI selects them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model_containers.adapters import ADAPTERS, adapter_class

REPO = Path(__file__).resolve().parents[2]
FRAMEWORKS = ["sklearn", "torch", "onnxruntime", "xgboost", "pyspark", "tensorflow", "keras"]


def test_importing_every_adapter_imports_no_framework() -> None:
    modules = sorted({target.partition(":")[0] for target in ADAPTERS.values()})
    probe = (
        f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert not loaded & set(FRAMEWORKS), loaded & set(FRAMEWORKS)


def test_unknown_adapter_is_named() -> None:
    with pytest.raises(KeyError, match="unknown adapter 'caffe2'; known adapters: keras, onnx"):
        adapter_class("caffe2")


def _container(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "model_containers", "--model-name", "m", "--model-version", "1"]
    return subprocess.run(
        [*argv, "--input-type", "doubles", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_container_needs_a_model_dir_written_by_a_deployer(tmp_path: Path) -> None:
    out = _container("--adapter", "sklearn")
    assert out.returncode == 1
    assert "--adapter sklearn needs --model-path DIR" in out.stderr
    out = _container("--adapter", "onnx", "--model-path", str(tmp_path))
    assert out.returncode == 1
    assert "clipper_model.json does not exist" in out.stderr


def test_container_reports_a_deploy_env_mismatch_before_loading(tmp_path: Path) -> None:
    recorded = {
        "python": "3.11.0" if sys.version_info[:2] != (3, 11) else "3.99.0",
        "python_match": "minor",
        "packages": [],
    }
    out = _container(
        "--closure", str(tmp_path / "never-read.pkl"), "--deploy-env", json.dumps(recorded)
    )
    assert out.returncode == 1
    assert "at deploy time (the model holds pickled Python code" in out.stderr
    assert "never-read.pkl" not in out.stderr


def test_tensor_specs_take_what_the_framework_deployers_take() -> None:
    # A lower-case datatype was advertised as is and failed every OIP query with
    # a KeyError; a None dimension failed the deploy with a TypeError.
    from model_containers import TensorSpec

    assert TensorSpec("y", "fp64", (None, 3)) == TensorSpec("y", "FP64", (-1, 3))
    with pytest.raises(ValueError, match="unknown datatype 'float'"):
        TensorSpec("y", "float", (1,))
    with pytest.raises(ValueError, match="not a list of integers"):
        TensorSpec("y", "FP32", ("a",))


def test_a_model_whose_input_type_disagrees_is_refused_before_any_container() -> None:
    from clipper_core import ClipperConnection, LocalContainerManager
    from clipper_core.errors import BadInput
    from model_containers import Model

    class Texts(Model):
        input_type = "strings"

        def predict(self, inputs: list[str]) -> list[int]:
            return [len(x) for x in inputs]

    # No server: the check comes before the call (port 9 would refuse it).
    conn = ClipperConnection(LocalContainerManager(query_port=9, management_port=9))
    with pytest.raises(BadInput, match="declares input_type='strings' but is deployed"):
        conn.deploy_pickled("texts", 1, "doubles", Texts())
    with pytest.raises(BadInput, match="neither callable nor a Model"):
        conn.deploy_pickled("texts", 1, "doubles", 42)
