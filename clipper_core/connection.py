"""``ClipperConnection``: the Python configuration API, with Clipper's names.

It talks to the management REST API over HTTP (stdlib ``urllib``), so it works
against a server in another process (``start_clipper`` starts one) as well as an
embedded one (``ClipperConnection.for_server(srv)``).
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from clipper_core.auth import ADMIN_TOKEN_ENV, admin_token_from_env, read_admin_token
from clipper_core.connection_apply import DeclarativeConfig
from clipper_core.connection_models import ModelDeployment
from clipper_core.connection_pipelines import PipelineConfiguration
from clipper_core.errors import ClipperError

if TYPE_CHECKING:
    from clipper_core.config import ServerConfig


class RunningServer(Protocol):
    """A started embedded server, as :meth:`ClipperConnection.for_server` reads it
    (``ClipperServer`` is one)."""

    @property
    def config(self) -> ServerConfig: ...

    @property
    def query_port(self) -> int: ...

    @property
    def management_port(self) -> int: ...

    @property
    def scheme(self) -> str: ...


#: Clipper's client raised ``ClipperException``; ours is the same tree.
ClipperException = ClipperError


class ServerNotRunning(ClipperError):
    """No server answers on the management port."""

    http_status = 503
    kind = "not_running"


class LocalContainerManager:
    """Where the server runs and how to start it: local processes on this machine.

    Fills the slot of Clipper's ``DockerContainerManager``: pass it to
    ``ClipperConnection``.

    Args (beyond where the server listens):
        admin_token: Sent as ``Authorization: Bearer`` on every management call;
            default ``$CLIPPER_ADMIN_TOKEN``, else the token the server generated in
            ``<state_dir>/admin_token`` (read when first needed).
        tls: The server speaks HTTPS (implied by ``tls_ca``).
        tls_ca: PEM file of the CA that signed the server's certificate (a
            self-signed certificate is its own CA); default ``$CLIPPER_TLS_CA``,
            else the system's CAs.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        query_port: int = 1337,
        management_port: int = 1338,
        state_dir: str | None = None,
        *,
        admin_token: str | None = None,
        tls: bool = False,
        tls_ca: str | None = None,
    ) -> None:
        self.host = host
        self.query_port = query_port
        self.management_port = management_port
        self.state_dir = state_dir or os.environ.get(
            "CLIPPER_STATE_DIR", str(Path.home() / ".clipper_core")
        )
        self._admin_token = admin_token if admin_token is not None else admin_token_from_env()
        self.tls_ca = tls_ca or os.environ.get("CLIPPER_TLS_CA") or None
        self.tls = tls or self.tls_ca is not None

    @property
    def admin_token(self) -> str | None:
        """The token sent to the management API (see the class's arguments)."""
        if not self._admin_token:
            self._admin_token = read_admin_token(self.state_dir)
        return self._admin_token or None

    @admin_token.setter
    def admin_token(self, value: str | None) -> None:
        self._admin_token = value

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context (None for plain HTTP)."""
        if not self.tls:
            return None
        from clipper_core.tls import client_ssl_context

        return client_ssl_context(self.tls_ca)

    @property
    def pid_file(self) -> Path:
        return Path(self.state_dir) / "server.pid"

    @property
    def log_file(self) -> Path:
        return Path(self.state_dir) / "server.log"


class ClipperConnection(ModelDeployment, PipelineConfiguration, DeclarativeConfig):
    """Configure a running clipper_core server (Clipper's ``clipper_admin`` API).

    The deploy calls (``deploy_model``, ``deploy_pickled``, ``register_model``) come
    from :class:`~clipper_core.connection_models.ModelDeployment`, the pipeline
    calls (``register_pipeline``...) from
    :class:`~clipper_core.connection_pipelines.PipelineConfiguration`, and ``apply``
    (a declarative file) from :class:`~clipper_core.connection_apply.DeclarativeConfig`.
    """

    def __init__(
        self, container_manager: LocalContainerManager | None = None, *, timeout: float = 300.0
    ) -> None:
        self.cm = container_manager or LocalContainerManager()
        self.timeout = timeout
        self.connected = False

    @classmethod
    def for_server(cls, server: RunningServer) -> ClipperConnection:
        """A connection to an embedded ``ClipperServer`` (already started)."""
        cm = LocalContainerManager(
            server.config.host,
            server.query_port,
            server.management_port,
            server.config.state_dir,
            admin_token=server.config.admin_token,
            tls=server.scheme == "https",
            tls_ca=server.config.tls_cert,
        )
        conn = cls(cm)
        conn.connected = True
        return conn

    # -- transport --------------------------------------------------------------

    @property
    def management_url(self) -> str:
        return f"{self.cm.scheme}://{self.cm.host}:{self.cm.management_port}"

    def get_query_addr(self) -> str:
        return f"{self.cm.host}:{self.cm.query_port}"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.cm.admin_token:
            headers["Authorization"] = f"Bearer {self.cm.admin_token}"
        return headers

    def _call(self, op: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body or {}).encode()
        req = urllib.request.Request(
            f"{self.management_url}/admin/{op}",
            data=data,
            method="POST",
            headers=self._headers(),
        )
        try:
            with urllib.request.urlopen(
                req, timeout=self.timeout, context=self.cm.ssl_context()
            ) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                cause = json.loads(raw).get("cause", raw.decode(errors="replace"))
            except (ValueError, AttributeError):
                cause = raw.decode(errors="replace")
            raise ClipperError(f"{op} failed ({exc.code}): {cause}") from None
        except (urllib.error.URLError, ConnectionError) as exc:
            raise ServerNotRunning(
                f"clipper_core is not running at {self.management_url}"
                f" ({exc}); start it with `clipper start`"
            ) from None

    def ping(self) -> bool:
        """Whether a server answers on the management port (a 401, for a wrong or
        missing token, is an answer too)."""
        req = urllib.request.Request(f"{self.management_url}/admin/ping", headers=self._headers())
        try:
            with urllib.request.urlopen(req, timeout=2, context=self.cm.ssl_context()) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    # -- lifecycle --------------------------------------------------------------

    def start_clipper(self, *, timeout: float = 60.0, python: str | None = None) -> None:
        """Start a server process in the background and wait until it answers."""
        if self.ping():
            raise ClipperError(f"a server already answers at {self.management_url}")
        state = Path(self.cm.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        argv = [
            python or sys.executable,
            "-m",
            "clipper_core.cli",
            "serve",
            "--host",
            self.cm.host,
            "--query-port",
            str(self.cm.query_port),
            "--management-port",
            str(self.cm.management_port),
            "--state-dir",
            str(state),
        ]
        env = dict(os.environ)
        if self.cm._admin_token:  # given to this connection: the server requires the same
            env[ADMIN_TOKEN_ENV] = self.cm._admin_token
        with open(self.cm.log_file, "ab") as log:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.cm.pid_file.write_text(str(proc.pid))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise ClipperError(
                    f"the server exited with code {proc.returncode}:\n{self._log_tail()}"
                )
            if self.ping():
                self.connected = True
                return
            time.sleep(0.1)
        proc.kill()
        proc.wait()
        raise ClipperError(f"the server did not answer within {timeout} s:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.cm.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def connect(self) -> None:
        """Check that a server answers; raise ``ServerNotRunning`` otherwise."""
        self._call("get_all_applications")
        self.connected = True

    def stop_all(self, graceful: bool = True, timeout: float = 60.0) -> None:
        """Stop the server and every model container it started.

        The server drains its in-flight requests first (for up to its
        ``shutdown_grace``, 30 s by default); after ``timeout`` seconds a server
        started by ``start_clipper`` is killed."""
        pid = self._server_pid()
        if self.ping():
            self._call("shutdown")
        if pid is None:
            end = time.monotonic() + timeout
            while self.ping() and time.monotonic() < end:
                time.sleep(0.1)
            return
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        self.cm.pid_file.unlink(missing_ok=True)
        self.connected = False

    def _server_pid(self) -> int | None:
        try:
            pid = int(self.cm.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    # -- applications -----------------------------------------------------------

    def register_application(
        self,
        name: str,
        input_type: str,
        default_output: str,
        slo_micros: int,
        *,
        policy: str = "single",
        policy_config: dict[str, Any] | None = None,
    ) -> None:
        """Register an app; ``policy`` picks the selection policy among its linked
        models (``single``, ``ensemble``, ``exp3``, ``exp4``, ``epsilon_greedy``,
        ``ucb1``, ``cascade``) and ``policy_config`` holds its options."""
        body: dict[str, Any] = {
            "name": name,
            "input_type": input_type,
            "default_output": default_output,
            "latency_slo_micros": slo_micros,
        }
        if policy != "single" or policy_config:
            body["policy"] = policy
            body["policy_config"] = policy_config or {}
        self._call("add_app", body)

    def unregister_application(self, name: str) -> None:
        self._call("delete_app", {"name": name})

    def set_app_api_keys(self, app_name: str, api_keys: list[str]) -> None:
        """Require one of ``api_keys`` (``X-Api-Key`` or ``Authorization: Bearer``)
        on the app's queries; an empty list lifts the requirement.  The server keeps
        only their SHA-256 digests."""
        self._call("set_api_keys", {"app_name": app_name, "api_keys": list(api_keys)})

    def link_model_to_app(self, app_name: str, model_name: str) -> None:
        self._call("add_model_links", {"app_name": app_name, "model_names": [model_name]})

    def unlink_model_from_app(self, app_name: str, model_name: str) -> None:
        self._call("remove_model_links", {"app_name": app_name, "model_names": [model_name]})

    def get_all_apps(self, verbose: bool = False) -> list[Any]:
        return list(self._call("get_all_applications", {"verbose": verbose}))

    def get_app_info(self, name: str) -> dict[str, Any] | None:
        info = self._call("get_application", {"name": name})
        return info or None

    def get_linked_models(self, app_name: str) -> list[str]:
        return list(self._call("get_linked_models", {"app_name": app_name}))

    def set_selection_policy(
        self, app_name: str, policy: str, policy_config: dict[str, Any] | None = None
    ) -> None:
        """Switch an app's selection policy (or its options); what the previous one
        learned is dropped."""
        self._call(
            "set_selection_policy",
            {"app_name": app_name, "policy": policy, "policy_config": policy_config or {}},
        )

    def get_selection_state(self, app_name: str, uid: int | None = None) -> dict[str, Any] | None:
        """The app's policy, options, the state that decides for ``uid`` (the global
        one by default), a summary (probabilities, mean losses...) and counters."""
        body: dict[str, Any] = {"app_name": app_name}
        if uid is not None:
            body["uid"] = uid
        info = self._call("get_selection_state", body)
        return dict(info) if info else None

    # -- models -----------------------------------------------------------------

    def get_all_models(self, verbose: bool = False) -> list[Any]:
        return list(self._call("get_all_models", {"verbose": verbose}))

    def get_model_info(self, name: str, version: str | int) -> dict[str, Any] | None:
        info = self._call("get_model", {"model_name": name, "model_version": str(version)})
        return info or None

    def get_current_model_version(self, name: str) -> str:
        for m in self.get_all_models(verbose=True):
            if m["model_name"] == name and m["is_current_version"]:
                return str(m["model_version"])
        raise ClipperError(f"model {name!r} has no current version")

    def set_model_version(
        self, name: str, version: str | int, num_replicas: int | None = None
    ) -> None:
        """Route the model's queries to ``version`` (roll forward or back)."""
        if num_replicas is not None:
            self.set_num_replicas(name, num_replicas, version)
        self._call("set_model_version", {"model_name": name, "model_version": str(version)})

    def set_num_replicas(
        self, name: str, num_replicas: int, version: str | int | None = None
    ) -> None:
        body: dict[str, Any] = {"model_name": name, "num_replicas": num_replicas}
        if version is not None:
            body["model_version"] = str(version)
        self._call("set_num_replicas", body)

    def get_num_replicas(self, name: str, version: str | int | None = None) -> int:
        body: dict[str, Any] = {"model_name": name}
        if version is not None:
            body["model_version"] = str(version)
        info = self._call("get_num_replicas", body)
        if not info:
            raise ClipperError(f"model {name!r} is not registered")
        return int(info["num_replicas"])

    def get_all_model_replicas(self, verbose: bool = False) -> list[Any]:
        return list(self._call("get_all_containers", {"verbose": verbose}))

    def stop_versioned_models(self, model_versions_dict: dict[str, list[str]]) -> None:
        for name, versions in model_versions_dict.items():
            for version in versions:
                self._call(
                    "delete_versioned_model", {"model_name": name, "model_version": str(version)}
                )

    def stop_models(self, model_names: list[str]) -> None:
        """Stop every version of the named models."""
        wanted = set(model_names)
        versions: dict[str, list[str]] = {}
        for m in self.get_all_models(verbose=True):
            if m["model_name"] in wanted:
                versions.setdefault(m["model_name"], []).append(m["model_version"])
        self.stop_versioned_models(versions)

    def stop_inactive_model_versions(self, model_names: list[str]) -> None:
        wanted = set(model_names)
        versions: dict[str, list[str]] = {}
        for m in self.get_all_models(verbose=True):
            if m["model_name"] in wanted and not m["is_current_version"]:
                versions.setdefault(m["model_name"], []).append(m["model_version"])
        self.stop_versioned_models(versions)

    def stop_all_model_containers(self) -> None:
        for m in self.get_all_models(verbose=True):
            self.set_num_replicas(m["model_name"], 0, m["model_version"])

    def inspect_instance(self) -> dict[str, Any]:
        """The query port's ``/metrics`` as JSON: apps, models, cache, replicas, and
        under ``"metrics"`` every figure of the Prometheus exposition."""
        url = f"{self.cm.scheme}://{self.cm.host}:{self.cm.query_port}/metrics"
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(
            req, timeout=self.timeout, context=self.cm.ssl_context()
        ) as resp:
            return dict(json.loads(resp.read()))

    def get_metrics(self) -> dict[str, Any]:
        """The server's metrics as Python data (the figures Prometheus scrapes).

        Keys: ``apps`` (per app: requests, answers_within_slo, errors by kind,
        default_outputs by reason, latency_seconds histogram, and ``window``:
        throughput, goodput, slo_attainment, p50/p99 over the last
        ``window_seconds``), ``models`` (per ``"name:version"``: requests, batches,
        errors, cache hits/misses, queue, batch size limit and histograms,
        container latency, replicas), ``cache``, ``uptime_seconds``.
        """
        return dict(self.inspect_instance()["metrics"])

    def get_state(self) -> dict[str, Any]:
        return dict(self._call("get_state"))

    def test_predict_function(self, query: dict[str, Any], func: Any, input_type: str) -> Any:
        """Run ``func`` locally on a query body, as the container would."""
        from clipper_core.clipper_api import parse_predict

        parsed = parse_predict(json.dumps(query).encode(), input_type)
        outputs = func(list(parsed.inputs))
        return outputs if parsed.batch else outputs[0]
