"""The generic model-container image (model_containers/Dockerfile), checked as text:
no Docker engine runs here, so the image is not built.  What can break silently is
checked: what it copies exists, what it runs is the container module, it runs as
the uid and on the port the pod spec expects, and it installs what
model_containers imports with the project's own version floors."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from clipper_core.managers.k8s_manifests import KubernetesSettings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "model_containers" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_copy_sources_exist_in_the_build_context() -> None:
    copies = [args.split() for word, args in instructions() if word == "COPY"]
    assert copies
    for *sources, _target in copies:
        for source in sources:
            assert (REPO / source).exists(), source


def test_the_entrypoint_runs_the_container_module() -> None:
    entrypoints = [args for word, args in instructions() if word == "ENTRYPOINT"]
    assert len(entrypoints) == 1
    assert json.loads(entrypoints[0]) == ["python", "-m", "model_containers"]
    assert (REPO / "model_containers" / "__main__.py").is_file()
    env = " ".join(args for word, args in instructions() if word == "ENV")
    # The module is found where it was copied to.
    assert "PYTHONPATH=/opt/clipper" in env
    assert ("COPY", "model_containers /opt/clipper/model_containers") in instructions()


def test_the_image_matches_the_pod_spec() -> None:
    settings = KubernetesSettings()
    assert ("USER", str(settings.run_as_user)) in instructions()
    assert ("EXPOSE", str(settings.container_port)) in instructions()
    assert instructions()[0][0] == "FROM" and "python:3.11-slim" in instructions()[0][1]


def test_it_installs_the_container_runtime_dependencies_at_the_project_floors() -> None:
    runs = " ".join(args for word, args in instructions() if word == "RUN")
    installed = re.findall(r'"([A-Za-z0-9_.-]+)(>=[^"]+)"', runs)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = dict(re.match(r"([A-Za-z0-9_.-]+)(.*)", d).groups() for d in project)  # type: ignore[union-attr]
    assert {name for name, _ in installed} == {
        "grpcio",
        "protobuf",
        "numpy",
        "cloudpickle",
    }
    for name, floor in installed:
        assert floors[name] == floor, name
