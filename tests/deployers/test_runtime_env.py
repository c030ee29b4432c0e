"""Per-model runtime environments (pkgs_to_install) and the deploy-time version record."""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import pytest

from clipper_core.deployers import deploy_python_closure
from clipper_core.deployers.requirements import (
    deploy_environment,
    requirement_name,
    requirements_for,
)
from clipper_core.errors import BadInput, ClipperError
from clipper_core.managers.envs import MARKER, RuntimeEnvManager
from clipper_core.model_bundle import pack_directory, unpack_archive
from model_containers.environment import check
from tests.deployers.conftest import endpoint, link, serve
from tests.server.conftest import Running, start_server

# -- units -------------------------------------------------------------------------


def test_deploy_environment_records_versions() -> None:
    env = deploy_environment(
        [("cloudpickle", "exact"), ("numpy", "any"), ("no_such_module_xyz", "exact")],
        pickled_code=True,
    )
    assert env["python_match"] == "minor"
    assert [p["dist"] for p in env["packages"]] == ["cloudpickle", "numpy"]
    assert not check(env).errors


def test_requirements_pin_what_the_model_needs() -> None:
    env = {
        "packages": [
            {"module": "sklearn", "dist": "scikit-learn", "version": "1.6.1", "match": "exact"},
            {"module": "torch", "dist": "torch", "version": "2.13.0+cpu", "match": "present"},
            {"module": "numpy", "dist": "numpy", "version": "2.4.6", "match": "any"},
        ]
    }
    assert requirements_for(None, None, env) == []
    assert requirements_for(["requests", "Scikit_Learn>=1.5"], None, env) == [
        "requests",
        "Scikit_Learn>=1.5",
        "torch==2.13.0",
    ]
    assert requirement_name("--index-url https://example.invalid/simple") is None
    assert requirement_name("xgboost-cpu[scikit-learn]>=2") == "xgboost-cpu"


def test_requirements_files_are_read_as_the_servers_pip_needs_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pip runs in the environment's folder on the server: a "-r base.txt" or a
    # relative wheel path of the file (or of the caller) was looked for there.
    from clipper_core.deployers.requirements import read_requirements_file

    reqs = tmp_path / "reqs"
    (reqs / "wheels").mkdir(parents=True)
    wheel = reqs / "wheels" / "six-1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    (reqs / "base.txt").write_text("six  # the base\n-c pins.txt\n")
    (reqs / "pins.txt").write_text("six<2\n")
    (reqs / "requirements.txt").write_text(
        "-r base.txt\n--requirement=extra.txt\nwheels/six-1.0-py3-none-any.whl\nrequests>=2\n"
    )
    (reqs / "extra.txt").write_text("./wheels/six-1.0-py3-none-any.whl\n")
    assert read_requirements_file(reqs / "requirements.txt") == [
        "six",
        f"-c {reqs / 'pins.txt'}",
        str(wheel),
        str(wheel),
        "requests>=2",
    ]
    (reqs / "loop.txt").write_text("-r loop.txt\n")
    with pytest.raises(BadInput, match="includes itself"):
        read_requirements_file(reqs / "loop.txt")
    monkeypatch.chdir(reqs)
    assert requirements_for(["wheels/six-1.0-py3-none-any.whl"], None, {}) == [str(wheel)]


def test_environment_ids_are_stable_and_keyed_by_requirements(tmp_path: Path) -> None:
    envs = RuntimeEnvManager(tmp_path, python=sys.executable)
    a = envs.env_id(["six==1.16.0", "attrs"])
    assert a == envs.env_id(["attrs", " six==1.16.0 "])
    assert a != envs.env_id(["six==1.16.0"])
    assert envs.full_requirements(["numpy<3"])[:1] == ["numpy<3"]
    assert not any(r.startswith("numpy==") for r in envs.full_requirements(["numpy<3"]))
    assert any(r.startswith("grpcio==") for r in envs.full_requirements(["numpy<3"]))
    with pytest.raises(BadInput):
        envs.python_for({"runtime_env": {"requirements": ["a\nb"]}})


def test_an_environment_whose_python_is_gone_is_not_ready(tmp_path: Path) -> None:
    # A venv links to the interpreter it was made with: after that Python was
    # upgraded or removed, the cached environment counted as built and every
    # replica failed to start with a bare "No such file or directory".
    envs = RuntimeEnvManager(tmp_path, python=sys.executable)
    env_id = envs.env_id(["six==1.16.0"])
    bin_dir = envs.env_dir(env_id) / "bin"
    bin_dir.mkdir(parents=True)
    (envs.env_dir(env_id) / MARKER).write_text("{}")
    (bin_dir / "python").symlink_to(tmp_path / "python3.0-removed")
    assert not envs.is_ready(env_id)
    (bin_dir / "python").unlink()
    (bin_dir / "python").symlink_to(sys.executable)
    assert envs.is_ready(env_id)


def test_a_build_that_takes_too_long_fails_saying_so(tmp_path: Path) -> None:
    """Held up by another process building the same environment that never
    finishes (here: the test holds its lock), a build fails after build_timeout
    rather than holding the deploys that need it for ever."""
    envs = RuntimeEnvManager(tmp_path, python=sys.executable, build_timeout=1.0)
    env_id = envs.env_id(["six==1.16.0"])
    tmp_path.mkdir(exist_ok=True)
    lock = os.open(tmp_path / f"{env_id}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # "another process" building it
        with pytest.raises(BadInput, match="took longer than 1 s and was stopped"):
            asyncio.run(asyncio.wait_for(envs.ensure({"requirements": ["six==1.16.0"]}), 30))
        assert envs.status(env_id)["status"] == "failed"
    finally:
        os.close(lock)


def test_check_reports_each_mismatch() -> None:
    report = check(
        {
            "python": "3.6.15",
            "python_match": "minor",
            "packages": [
                {
                    "module": "cloudpickle",
                    "dist": "cloudpickle",
                    "version": "0.0.1",
                    "match": "exact",
                },
                {"module": "numpy", "dist": "numpy", "version": "0.0.1", "match": "any"},
                {
                    "module": "no_such_xyz",
                    "dist": "no-such-xyz",
                    "version": "1.0",
                    "match": "present",
                },
            ],
        }
    )
    assert len(report.errors) == 3, report.errors
    assert "Python" in report.errors[0] and "3.6.15 at deploy time" in report.errors[0]
    assert "cloudpickle" in report.errors[1] and "0.0.1 at deploy time" in report.errors[1]
    assert "no-such-xyz is not installed here" in report.errors[2]
    assert report.warnings and "numpy" in report.warnings[0]
    assert "pip install cloudpickle==0.0.1 no-such-xyz==1.0" in report.message()


def test_bundles_round_trip_and_refuse_escapes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"\x00\x01")
    (src / "m.json").write_text("{}")
    archive = tmp_path / "a.tar"
    archive.write_bytes(pack_directory(src))
    out = Path(unpack_archive(archive, tmp_path / "out", remove_archive=True))
    assert (out / "sub" / "w.bin").read_bytes() == b"\x00\x01"
    assert not archive.exists()

    for name in ("../evil.txt", "/abs.txt"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
        bad = tmp_path / "bad.tar"
        bad.write_bytes(buf.getvalue())
        with pytest.raises(BadInput, match="escapes"):
            unpack_archive(bad, tmp_path / "bad")
    assert not (tmp_path / "evil.txt").exists()


# -- through the server ------------------------------------------------------------


def _identity(inputs):
    return [float(x[0]) for x in inputs]


@pytest.mark.parametrize(
    ("deploy_env", "expected"),
    [
        (
            {"python": "3.6.15", "python_match": "minor", "packages": []},
            "3.6.15 at deploy time",
        ),
        (
            {
                "python": "",
                "packages": [
                    {
                        "module": "cloudpickle",
                        "dist": "cloudpickle",
                        "version": "0.0.1",
                        "match": "exact",
                    }
                ],
            },
            "0.0.1 at deploy time (the saved model needs the same release)",
        ),
    ],
)
def test_mismatch_fails_the_deploy_with_the_containers_message(
    server: Running, deploy_env: dict, expected: str
) -> None:
    name = "mismatch-" + ("py" if deploy_env["python"] else "pkg")
    with pytest.raises(ClipperError) as err:
        server.conn.deploy_pickled(
            name, 1, "doubles", _identity, container_extra={"deploy_env": deploy_env}
        )
    assert expected in str(err.value), str(err.value)
    assert "pkgs_to_install" in str(err.value) or "Run the model containers with Python 3.6" in str(
        err.value
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pkgs_to_install_builds_one_cached_isolated_environment(tmp_path: Path) -> None:
    state = tmp_path / "state"
    r = start_server(state, grpc_port=0, replica_start_timeout=120.0)

    def where(inputs):
        import importlib.util
        import sys

        import six

        has_sklearn = importlib.util.find_spec("sklearn") is not None
        return [f"{six.__version__}|{sys.prefix}|{has_sklearn}" for _ in inputs]

    try:
        lines: list[str] = []
        endpoint(r, "env-a")
        deploy_python_closure(
            r.conn,
            "env-a",
            1,
            "doubles",
            where,
            pkgs_to_install=["six==1.16.0"],
            progress=lines.append,
        )
        link(r, "env-a")
        built = [p for p in (state / "envs").iterdir() if p.is_dir()]
        assert len(built) == 1
        env_dir = built[0]
        text = "\n".join(lines)
        assert f"[env {env_dir.name[:8]}] building environment" in text
        assert "six" in text and "ready in" in text
        marker = json.loads((env_dir / "clipper-env.json").read_text())
        assert "six==1.16.0" in marker["requirements"]
        assert any(r.startswith("cloudpickle==") for r in marker["requirements"])
        assert any(line.lower().startswith("six==1.16.0") for line in marker["installed"])

        assert serve(r, "env-a", [[1.0]]) == [f"1.16.0|{env_dir}|False"]

        # Same requirements: the cached environment, no second build.
        lines.clear()
        endpoint(r, "env-b")
        deploy_python_closure(
            r.conn,
            "env-b",
            1,
            "doubles",
            where,
            pkgs_to_install=["six==1.16.0"],
            progress=lines.append,
        )
        link(r, "env-b")
        assert lines == [f"[env {env_dir.name[:8]}] ready (built before, {env_dir}/bin/python)"]
        assert serve(r, "env-b", [[2.0]]) == [f"1.16.0|{env_dir}|False"]

        # pip's error reaches the deployer.
        with pytest.raises(ClipperError, match=r"(?s)environment failed.*nvalid requirement"):
            deploy_python_closure(
                r.conn,
                "env-bad",
                1,
                "doubles",
                where,
                pkgs_to_install=["not a requirement!!"],
                progress=None,
            )
        assert r.conn.get_model_info("env-bad", 1) is None
    finally:
        r.bg.stop()

    # A restarted server brings the model back in its environment, without building.
    r = start_server(state, grpc_port=0, replica_start_timeout=120.0)
    try:
        assert serve(r, "env-a", [[3.0]]) == [f"1.16.0|{env_dir}|False"]
        assert (
            len([p for p in (state / "envs").iterdir() if (p / "clipper-env.json").exists()]) == 1
        )
    finally:
        r.bg.stop()
