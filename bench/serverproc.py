"""The clipper_core server process that a benchmark drives.

``ClipperProcess`` starts ``python -m clipper_core.cli serve`` on free loopback
ports with a temporary state folder, deploys a scenario's model through
``ClipperConnection``, samples the server's figures while the load runs, and
tears everything down by PID (the server first, then any model container that
outlived it).  The bare server (the floor) is :mod:`bench.bare_process`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.ports import free_port
from bench.scenario import Scenario

REPO_ROOT = Path(__file__).resolve().parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of a process (Linux /proc), None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def frontend_children(pid: int, replicas: set[int]) -> list[int]:
    """The direct children of ``pid`` that are query workers (``--workers N``):
    not replicas, nor anything else the frontend runs."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids = [int(k) for k in f.read().split()]
        except (OSError, ValueError):
            continue
        for kid in kids:
            if kid in replicas:
                continue
            try:
                with open(f"/proc/{kid}/cmdline", "rb") as f:
                    if b"query_worker" in f.read():
                        out.append(kid)
            except OSError:
                continue
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@functools.cache
def _serve_options() -> frozenset[str]:
    """The options ``clipper serve`` takes in this tree (read from its parser)."""
    import argparse

    from clipper_core.cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            serve = action.choices.get("serve")
            if serve is not None:
                return frozenset(o for a in serve._actions for o in a.option_strings)
    return frozenset()


def serve_supports(option: str) -> bool:
    """Whether ``clipper serve`` takes ``option`` (trees differ while work lands)."""
    return option in _serve_options()


@functools.cache
def config_has(field_name: str) -> bool:
    """Whether ``ServerConfig`` has a setting (e.g. ``grpc_port``)."""
    import dataclasses

    from clipper_core.config import ServerConfig

    return any(f.name == field_name for f in dataclasses.fields(ServerConfig))


class ClipperProcess:
    """A clipper_core server in its own process, and its model containers."""

    def __init__(
        self,
        *,
        grpc: bool = False,
        profile: Path | None = None,
        log_path: Path | None = None,
        env: dict[str, str] | None = None,
        admission: bool = True,
        extra_args: list[str] | None = None,
    ) -> None:
        self.want_grpc = grpc
        self.admission = admission
        self.extra_args = list(extra_args or [])
        self.profile = profile
        self.env = env
        self.state_dir = Path(tempfile.mkdtemp(prefix="clipper-bench-"))
        self.log_path = log_path or self.state_dir / "server.log"
        self.host = "127.0.0.1"
        self.query_port = 0
        self.management_port = 0
        self.grpc_port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: Any = None
        self._replica_pids: set[int] = set()

    # -- lifecycle ----------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        from clipper_core.connection import ClipperConnection, LocalContainerManager

        self.query_port = free_port()
        self.management_port = free_port()
        args = [
            "--host",
            self.host,
            "--query-port",
            str(self.query_port),
            "--management-port",
            str(self.management_port),
            "--state-dir",
            str(self.state_dir),
            "serve",
            "--log-level",
            "warning",
        ]
        env = {**os.environ, **(self.env or {})}
        # The OIP gRPC frontend (ServerConfig.grpc_port, default 8001): on a free
        # port when the load needs it, off otherwise (no clash between runs).
        if self.want_grpc:
            if not (config_has("grpc_port") or serve_supports("--grpc-port")):
                raise RuntimeError(
                    "OIP gRPC is not available: the server has no grpc_port setting"
                    " (the OIP frontend has not landed in this tree yet)"
                )
            self.grpc_port = free_port()
            env["CLIPPER_GRPC_PORT"] = str(self.grpc_port)
            if serve_supports("--grpc-port"):
                args += ["--grpc-port", str(self.grpc_port)]
        else:
            env["CLIPPER_GRPC_PORT"] = "off"
        if not self.admission:
            if serve_supports("--no-admission"):
                args.append("--no-admission")
        # Human-readable server log (the default became JSON lines).
        if serve_supports("--log-format"):
            args += ["--log-format", "text"]
        args += self.extra_args
        if self.profile is not None:
            argv = [sys.executable, "-m", "bench.profile_server", str(self.profile), "--", *args]
        else:
            argv = [sys.executable, "-m", "clipper_core.cli", *args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=env,
                start_new_session=True,
            )
        self.conn = ClipperConnection(
            LocalContainerManager(
                self.host, self.query_port, self.management_port, str(self.state_dir)
            ),
            timeout=120.0,
        )
        end = time.monotonic() + timeout
        while not self.conn.ping():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited at start:\n{self.log_tail()}")
            if time.monotonic() > end:
                raise RuntimeError(f"the server did not answer in {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def replica_pids(self) -> list[int]:
        try:
            state = self.conn.get_state()
        except Exception:
            return sorted(self._replica_pids)
        for r in state.get("replicas", []):
            if r.get("pid"):
                self._replica_pids.add(int(r["pid"]))
        return sorted(self._replica_pids)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server (it stops its containers), then clean up by PID."""
        if self.proc is None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            return
        replicas = self.replica_pids() if self.proc.poll() is None else sorted(self._replica_pids)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in replicas:
            # A container that outlived its server (guard against PID reuse).
            if _alive(pid) and "model_containers" in _cmdline(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + 5
        for pid in replicas:
            while _alive(pid) and "model_containers" in _cmdline(pid):
                if time.monotonic() > end:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.05)
        self.proc = None
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> ClipperProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration --------------------------------------------------------------

    @staticmethod
    def model_name(app: str) -> str:
        """The model behind app ``app``.  Not the app's own name: OIP resolves a
        name to a model before an app, and the benchmark queries the *app* on
        every protocol (its SLO, its default output)."""
        return f"{app}-model"

    def deploy(self, sc: Scenario, app: str) -> str:
        """Register app ``app``, deploy the scenario's model behind it, link them.

        Returns the model's name."""
        import cloudpickle

        import bench.models
        from clipper_core.deployers import deploy_python_closure

        cloudpickle.register_pickle_by_value(bench.models)
        m = sc.model
        model = bench.models.build(
            m.kind, dim=m.dim, seed=m.seed, output=m.output, a_ms=m.a_ms, b_ms=m.b_ms
        )
        name = self.model_name(app)
        self.conn.register_application(
            app, m.input_type, sc.app.default_output, round(sc.app.slo_ms * 1000)
        )
        deploy_python_closure(
            self.conn,
            name,
            1,
            m.input_type,
            model,
            num_replicas=m.num_replicas,
            batch_size=m.batch_size,
            cache_enabled=m.cache_enabled,
            batch_wait_micros=m.batch_wait_micros,
            **({"controller": m.controller} if m.controller else {}),
        )
        self.conn.link_model_to_app(app, name)
        self.replica_pids()
        return name

    def undeploy(self, app: str) -> None:
        self.replica_pids()
        self.conn.unregister_application(app)
        self.conn.stop_models([self.model_name(app)])

    # -- figures ------------------------------------------------------------------

    def metrics_json(self) -> dict[str, Any]:
        """``GET /metrics`` with ``Accept: application/json`` (what inspect_instance reads)."""
        req = urllib.request.Request(
            f"http://{self.host}:{self.query_port}/metrics",
            headers={"Accept": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return dict(json.loads(resp.read()))

    def sample(self) -> dict[str, Any]:
        """One sample of the server's figures: per model version, the controller's
        batch size, the queue, and the batches run so far; and CPU seconds."""
        t = time.monotonic()
        try:
            state = self.conn.get_state()
        except Exception:
            state = self.metrics_json()
        try:
            containers = self.conn.get_all_model_replicas(verbose=True)
        except Exception:
            containers = []
        batches: dict[str, int] = {}
        for c in containers:
            if isinstance(c, dict):
                key = f"{c.get('model_name')}:{c.get('model_version')}"
                batches[key] = batches.get(key, 0) + int(c.get("batches", 0))
        # The observability snapshot (state["metrics"], when the server has it)
        # counts batches and their sizes exactly; without it, the batch count
        # comes from the replicas' counters and the inputs from the queue's.
        snap = (state.get("metrics") or {}).get("models", {})
        models = {}
        for m in state.get("models", []):
            key = f"{m['model']}:{m['version']}"
            q = m.get("queue", {})
            row: dict[str, Any] = {
                "batch_size": m.get("batch_size"),
                "queries": m.get("queries", 0),
                "cache_hits": m.get("cache_hits", 0),
                "queue_len": q.get("len", q.get("length", 0)),
                "taken": q.get("taken", 0),
                "expired": q.get("expired", 0),
                "rejected": q.get("rejected", 0),
                "batches": batches.get(key, 0),
            }
            sm = snap.get(key)
            if isinstance(sm, dict):
                hist = sm.get("batch_size") if isinstance(sm.get("batch_size"), dict) else {}
                if "sum" in hist and "count" in hist:
                    row["taken"] = hist["sum"]
                    row["batches"] = hist["count"]
                if "controller_mode" in sm:
                    row["controller_mode"] = sm["controller_mode"]
                for src, dst in (
                    ("batch_latency_seconds", "batch_latency"),  # dispatcher: gRPC round trip
                    ("container_latency_seconds", "model_latency"),  # the model's own call
                ):
                    lat = sm.get(src)
                    if isinstance(lat, dict) and "sum" in lat:
                        row[f"{dst}_sum_s"] = lat["sum"]
                        row[f"{dst}_count"] = lat.get("count", 0)
            models[key] = row
        pids = [int(r["pid"]) for r in state.get("replicas", []) if r.get("pid")]
        self._replica_pids.update(pids)
        server_cpu = None
        if self.proc is not None:
            # The frontend: this process and its query workers (--workers N), not
            # the replicas (counted apart); the workers were left out before.
            server_cpu = cpu_seconds(self.pid)
            for child in frontend_children(self.pid, self._replica_pids):
                server_cpu = (server_cpu or 0.0) + (cpu_seconds(child) or 0.0)
        replica_cpu = sum(c for c in (cpu_seconds(p) for p in pids) if c is not None)
        metrics = state.get("metrics") or {}
        return {
            "t": t,
            "models": models,
            "apps": _app_rows(metrics.get("apps") or {}),
            "pipelines": _pipeline_rows(metrics.get("pipelines") or {}),
            "cache": state.get("cache"),
            "cpu_server_s": server_cpu,
            "cpu_replicas_s": replica_cpu,
        }

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until no query is queued (between the steps of a ramp)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = self.sample()
            if all(m["queue_len"] == 0 for m in s["models"].values()):
                return
            time.sleep(0.1)


def _latency(row: dict[str, Any], hist: Any) -> None:
    """A latency histogram's running sum and count, into ``row``."""
    if isinstance(hist, dict) and "sum" in hist:
        row["latency_sum_s"] = hist["sum"]
        row["latency_count"] = hist.get("count", 0)


def _app_rows(apps: dict[str, Any]) -> dict[str, Any]:
    """Per app (pipelines included): requests and the server-side latency."""
    out: dict[str, Any] = {}
    for name, a in apps.items():
        row: dict[str, Any] = {"requests": a.get("requests", 0)}
        _latency(row, a.get("latency_seconds"))
        out[name] = row
    return out


def _pipeline_rows(pipelines: dict[str, Any]) -> dict[str, Any]:
    """Per pipeline: each stage's counters and latency (send to answer), each
    edge's evaluated and taken counts."""
    out: dict[str, Any] = {}
    for name, p in pipelines.items():
        stages: dict[str, Any] = {}
        for stage, st in (p.get("stages") or {}).items():
            row = {
                k: st.get(k, 0)
                for k in ("requests", "answered", "skipped", "deadline_misses", "errors")
            }
            row["model"] = st.get("model")
            _latency(row, st.get("latency_seconds"))
            stages[stage] = row
        edges = {
            f"{e['from']}->{e['to']}": {
                "when": e.get("when"),
                "evaluated": e.get("evaluated", 0),
                "taken": e.get("taken", 0),
            }
            for e in p.get("edges") or []
        }
        out[name] = {"stages": stages, "edges": edges}
    return out


class Poller:
    """Samples ``ClipperProcess.sample()`` every ``interval`` seconds on a thread."""

    def __init__(self, server: ClipperProcess, interval: float = 0.5) -> None:
        self.server = server
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-poller", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.server.sample())
            except Exception:
                self.errors += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        with contextlib.suppress(Exception):
            self.samples.append(self.server.sample())
