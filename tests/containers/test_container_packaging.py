"""model_containers stays light; the committed generated code is fresh."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from container_harness import REPO, container_env

FORBIDDEN = ("clipper_core", "uvloop", "httptools", "orjson")
ALLOWED_THIRD_PARTY = {"grpc", "google", "numpy", "cloudpickle"}
# Each framework adapter imports its own framework, lazily (in load_model); only there.
ADAPTER_FRAMEWORKS = {
    "sklearn", "joblib", "skops", "torch", "onnxruntime", "xgboost", "pyspark",
    "tensorflow", "keras",
}  # fmt: skip


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env=container_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout.splitlines()[-1]))


def _top_levels(modules: list[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_model_containers_imports_no_frontend_dependency() -> None:
    loaded = _top_levels(
        _loaded_after(
            "import model_containers, model_containers.cli, model_containers.server, "
            "model_containers.codec, model_containers.registration, model_containers._proto."
            "container_pb2_grpc, cloudpickle"
        )
    )
    assert not loaded & set(FORBIDDEN), loaded & set(FORBIDDEN)


def test_importing_the_model_base_class_is_cheap() -> None:
    """A model module does `from model_containers import Model`: no grpc, no numpy."""
    loaded = _top_levels(_loaded_after("from model_containers import Model, TensorSpec"))
    assert not loaded & {"grpc", "numpy", "google", *FORBIDDEN}


def test_no_module_of_model_containers_names_a_forbidden_import() -> None:
    """Also catches imports inside functions, which the import probe cannot see."""
    for path in sorted((REPO / "model_containers").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            in_adapter = "adapters" in path.parts
            allowed = ALLOWED_THIRD_PARTY | (ADAPTER_FRAMEWORKS if in_adapter else set())
            for name in names:
                top = name.split(".")[0]
                assert top not in FORBIDDEN, f"{path}: imports {name}"
                assert top in sys.stdlib_module_names | allowed | {"model_containers"}, (
                    f"{path}: imports {name}, which a model's image may not have"
                )


def _generate(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    # In a subprocess: protoc in-process after many other tests loaded extension
    # modules has crashed the test runner.
    return subprocess.run(
        [sys.executable, "-m", "protos.generate", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(cwd)},
    )


def test_generated_proto_code_is_fresh() -> None:
    """Byte for byte what the pinned grpcio-tools writes (CI's lowest-versions venv has it)."""
    from protos import generate

    pin, installed = generate.pinned_generator(), generate.installed_generator()
    if installed != pin:
        pytest.skip(
            f"the byte-for-byte check needs grpcio-tools=={pin} (protos/requirements.txt), "
            f"this environment has {installed}; .ci/deps_matrix.py runs it in its "
            "lowest-versions venv, and test_generated_code_describes_the_protos checks "
            "the content here"
        )
    result = _generate("--check")
    assert result.returncode == 0, (
        "generated code is stale; run `make protos`:\n" + result.stdout + result.stderr
    )


def test_generated_code_describes_the_protos() -> None:
    """With any grpcio-tools: the committed descriptors are the .proto sources'."""
    result = _generate("--check-sources")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_sources_notices_an_edited_proto(tmp_path: Path) -> None:
    from protos import generate

    shutil.copytree(REPO / "protos", tmp_path / "protos")
    for package in generate.TARGETS:
        shutil.copytree(REPO / package, tmp_path / package)
    assert _generate("--check-sources", cwd=tmp_path).returncode == 0
    proto = tmp_path / "protos" / "container.proto"
    text = proto.read_text()
    head, sep, tail = text.partition("message PredictRequest {\n")
    assert sep, "container.proto has no PredictRequest message"
    proto.write_text(head + sep + "  string added_field = 99;\n" + tail)
    result = _generate("--check-sources", cwd=tmp_path)
    assert result.returncode == 1
    assert "stale: model_containers/_proto/container_pb2.py" in result.stderr


def _floor(requirement: str) -> tuple[int, ...]:
    match = re.search(r">=\s*([\d.]+)", requirement)
    assert match, f"{requirement!r} declares no lower bound"
    return tuple(int(part) for part in match.group(1).split("."))


def _version(text: str, pattern: str) -> tuple[int, ...]:
    match = re.search(pattern, text, re.MULTILINE)
    assert match, pattern
    return tuple(int(part) for part in match.group(1).split("."))


def test_declared_floors_cover_what_the_generated_code_needs() -> None:
    """pyproject.toml allows no grpcio or protobuf older than the committed code needs."""
    deps = {
        re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0]: d
        for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    for package in ("clipper_core/_proto", "model_containers/_proto"):
        for path in sorted((REPO / package).glob("*_pb2_grpc.py")):
            needs = _version(path.read_text(), r"^GRPC_GENERATED_VERSION = '([\d.]+)'$")
            assert _floor(deps["grpcio"]) >= needs, path
        for path in sorted((REPO / package).glob("*_pb2.py")):
            gencode = _version(path.read_text(), r"^# Protobuf Python Version: ([\d.]+)$")
            assert _floor(deps["protobuf"]) >= gencode, path


def test_the_check_names_stale_files(tmp_path: Path) -> None:
    """The --check machinery, with whatever grpcio-tools is installed (--any-generator)."""
    from protos import generate

    shutil.copytree(REPO / "protos", tmp_path / "protos")
    for package in generate.TARGETS:  # every generated package
        shutil.copytree(REPO / package, tmp_path / package)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return _generate(*args, "--any-generator", cwd=tmp_path)

    assert run().returncode == 0  # the installed generator's output is the reference here
    assert run("--check").returncode == 0
    stale = tmp_path / "model_containers" / "_proto" / "container_pb2.py"
    stale.write_text(stale.read_text() + "# edited by hand\n")
    (tmp_path / "model_containers" / "_proto" / "old_pb2.py").write_text("# left behind\n")
    result = run("--check")
    assert result.returncode == 1
    assert "stale: model_containers/_proto/container_pb2.py" in result.stderr
    assert "extra (not generated by any proto): model_containers/_proto/old_pb2.py" in (
        result.stderr
    )
    assert run().returncode == 0  # regenerating repairs it
    assert run("--check").returncode == 0
    assert not (tmp_path / "model_containers" / "_proto" / "old_pb2.py").exists()


def test_another_generator_is_refused(tmp_path: Path) -> None:
    from protos import generate

    shutil.copytree(REPO / "protos", tmp_path / "protos")
    (tmp_path / "protos" / "requirements.txt").write_text("grpcio-tools==0.0.1\n")
    for package in generate.TARGETS:
        shutil.copytree(REPO / package, tmp_path / package)
    for args in ((), ("--check",)):
        result = _generate(*args, cwd=tmp_path)
        assert result.returncode == 2
        assert "grpcio-tools==0.0.1" in result.stderr
        assert "make protos" in result.stderr
