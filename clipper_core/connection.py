"""``ClipperConnection``: the Python configuration API, with Clipper's names.

It talks to the management REST API over HTTP (stdlib ``urllib``), so it works
against a server in another process (``start_clipper`` starts one) as well as an
embedded one (``ClipperConnection.for_server(srv)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from clipper_core.connection_apply import DeclarativeConfig
from clipper_core.connection_local import LocalContainerManager, ServerNotRunning
from clipper_core.connection_models import ModelDeployment, noted
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

    @property
    def grpc_port(self) -> int | None: ...


__all__ = [
    "ClipperConnection",
    "ClipperException",
    "LocalContainerManager",
    "RunningServer",
    "ServerNotRunning",
]

log = logging.getLogger("clipper_core.connection")

#: Clipper's client raised ``ClipperException``; ours is the same tree.
ClipperException = ClipperError


def _exited(pid: int) -> bool:
    """Whether process ``pid`` is gone (a child of ours that exited is reaped: a
    zombie still answers ``kill(pid, 0)``)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass  # not our child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class ClipperConnection(ModelDeployment, PipelineConfiguration, DeclarativeConfig):
    """Configure a running clipper_core server (Clipper's ``clipper_admin`` API).

    The deploy calls (``deploy_model``, ``deploy_pickled``, ``register_model``) come
    from :class:`~clipper_core.connection_models.ModelDeployment`, the pipeline
    calls (``register_pipeline``...) from
    :class:`~clipper_core.connection_pipelines.PipelineConfiguration`, and ``apply``
    (a declarative file) from :class:`~clipper_core.connection_apply.DeclarativeConfig`.

    Every call blocks until the server answers, so none may run on the thread of
    a running event loop (where an embedded server's loop would wait for itself):
    they raise ``ClipperError`` there; use ``await asyncio.to_thread(...)``.
    Registering or deploying again with the same arguments changes nothing: the
    call returns the server's ``"unchanged: ..."`` reply and logs it (INFO,
    logger ``clipper_core.connection``).
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
            grpc_port=server.grpc_port,
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
        return f"{self.cm.scheme}://{self.cm.url_host}:{self.cm.management_port}"

    def get_query_addr(self) -> str:
        return f"{self.cm.url_host}:{self.cm.query_port}"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.cm.admin_token:
            headers["Authorization"] = f"Bearer {self.cm.admin_token}"
        return headers

    def _refuse_on_loop(self) -> None:
        """Raise when called on the thread of a running event loop: the call would
        block it, and an embedded server on that loop could never answer."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        name = "call"
        frame = sys._getframe(1)
        while frame is not None:  # the outermost method of this connection named
            if frame.f_locals.get("self") is self and not frame.f_code.co_name.startswith("_"):
                name = frame.f_code.co_name
            frame = frame.f_back  # type: ignore[assignment]
        raise ClipperError(
            f"ClipperConnection.{name} blocks until the server answers, and this thread"
            " runs an event loop (an embedded server's would wait for itself forever);"
            f" call it from another thread: await asyncio.to_thread(conn.{name}, ...)"
        )

    def _open(self, req: urllib.request.Request, timeout: float) -> Any:
        # No proxy: an http_proxy meant for the internet would get the admin
        # token (and deployed code) of a server on this host or network.
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        context = self.cm.ssl_context()
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        return urllib.request.build_opener(*handlers).open(req, timeout=timeout)

    def _call(self, op: str, body: dict[str, Any] | None = None) -> Any:
        self._refuse_on_loop()
        data = json.dumps(body or {}).encode()
        req = urllib.request.Request(
            f"{self.management_url}/admin/{op}",
            data=data,
            method="POST",
            headers=self._headers(),
        )
        try:
            with self._open(req, self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                cause = json.loads(raw).get("cause", raw.decode(errors="replace"))
            except (ValueError, AttributeError):
                cause = raw.decode(errors="replace")
            if exc.code == 401:  # which token was refused, and where the right one is
                cause = f"{cause}; {self.cm.token_hint()}"
            raise ClipperError(f"{op} failed ({exc.code}): {cause}") from None
        except (urllib.error.URLError, ConnectionError) as exc:
            raise self.cm.unreachable(self.management_url, exc) from None
        except TimeoutError:  # the server may still finish it: read the state again
            raise ClipperError(f"{op}: no answer within {self.timeout:g} s") from None

    def ping(self) -> bool:
        """Whether a server answers on the management port (a 401, for a wrong or
        missing token, is an answer too)."""
        self._refuse_on_loop()
        req = urllib.request.Request(f"{self.management_url}/admin/ping", headers=self._headers())
        try:
            with self._open(req, 2) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    # -- lifecycle --------------------------------------------------------------

    def start_clipper(
        self,
        *,
        timeout: float = 60.0,
        python: str | None = None,
        serve_args: Sequence[str] = (),
    ) -> str:
        """Start a server process in the background and wait until it answers.

        When a server already answers at this address (a script run again), it
        is used as it is: the call says so (``"unchanged: ..."``, logged at INFO).
        Ports of 0 are chosen by the server; ``self.cm`` then holds the ones it
        bound (the OIP gRPC one in ``cm.grpc_port``).

        Args:
            timeout: Seconds to wait for it to answer.
            python: The interpreter that runs it (default: this one).
            serve_args: More ``clipper serve`` options (``["--grpc-port", "0"]``...).

        Raises:
            ClipperError: The server exited or did not answer in time; or the
                server already running refuses this connection's token.
        """
        if self.cm.management_port != 0 and self.ping():
            self.connect()  # a server that refuses our token is not "ours"
            return noted(f"unchanged: a server already answers at {self.management_url}")
        proc = self.cm.launch(serve_args, python)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                self.cm.pid_file.unlink(missing_ok=True)
                raise ClipperError(self.cm.exit_reason(proc.returncode))
            if self.cm.read_ready() and self.ping():
                self.connected = True
                return (
                    f"started: query {self.cm.scheme}://{self.get_query_addr()}, management"
                    f" {self.management_url}, OIP gRPC {self.cm.grpc_port or 'none'}"
                )
            time.sleep(0.1)
        proc.kill()
        proc.wait()
        self.cm.pid_file.unlink(missing_ok=True)
        raise ClipperError(f"the server did not answer within {timeout} s:\n{self.cm.log_tail()}")

    def connect(self) -> None:
        """Check that a server answers; raise ``ServerNotRunning`` otherwise."""
        self._call("get_all_applications")
        self.connected = True

    def stop_all(
        self, graceful: bool = True, timeout: float = 60.0, *, remove_state: bool = False
    ) -> None:
        """Stop the server and every model container it started.

        By default the server's state stays: a later ``start_clipper`` on the same
        state folder brings back its apps, models (with their replicas) and
        pipelines.  With ``remove_state`` every pipeline, application and model
        version (their files and learned selection state with them) is deleted
        first, as Clipper's ``stop_all`` left nothing behind; what stays in the
        state folder is the (empty) store, the management token, the server's log
        and the built runtime environments (``envs/``, a cache).  A temporary state folder (a
        manager on port 0 that named none) is removed either way.

        The server drains its in-flight requests first (for up to its
        ``shutdown_grace``, 30 s by default); after ``timeout`` seconds a server
        started by ``start_clipper`` is killed."""
        pid = self.cm.started_pid()
        if self.ping():
            if remove_state:
                self.remove_everything()
            self._call("shutdown")
        end = time.monotonic() + timeout
        if pid is None:
            while self.ping() and time.monotonic() < end:
                time.sleep(0.1)
        else:
            while time.monotonic() < end:
                if _exited(pid):
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            self.cm.pid_file.unlink(missing_ok=True)
            self.cm.ready_file.unlink(missing_ok=True)
        self.cm.remove_temporary_state()
        self.connected = False

    def remove_everything(self) -> None:
        """Delete every pipeline, application and model version of the server."""
        for pipeline in self._call("get_all_pipelines"):
            self._call("delete_pipeline", {"name": pipeline})
        for app in self.get_all_apps():
            self.unregister_application(app)
        for m in self.get_all_models(verbose=True):
            self.stop_versioned_models({m["model_name"]: [m["model_version"]]})

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
    ) -> str:
        """Register an app; ``policy`` picks the selection policy among its linked
        models (``single``: the first linked model answers; ``ensemble``, ``exp3``,
        ``exp4``, ``epsilon_greedy``, ``ucb1``, ``cascade``) and ``policy_config``
        holds its options.

        Registering an existing app again is no error: with the same definition
        nothing changes (``"unchanged: ..."``); a new ``slo_micros`` or
        ``default_output`` is applied in place, a new policy restarts what the
        old one learned (``"updated: ..."``); another ``input_type`` is refused,
        naming both.

        Returns:
            The server's reply (``"unchanged: ..."`` and ``"updated: ..."`` are
            also logged at INFO).
        """
        body: dict[str, Any] = {
            "name": name,
            "input_type": input_type,
            "default_output": default_output,
            "latency_slo_micros": slo_micros,
        }
        if policy != "single" or policy_config:
            body["policy"] = policy
            body["policy_config"] = policy_config or {}
        return noted(self._call("add_app", body))

    def unregister_application(self, name: str) -> None:
        self._call("delete_app", {"name": name})

    def set_app_api_keys(self, app_name: str, api_keys: list[str]) -> None:
        """Require one of ``api_keys`` (``X-Api-Key`` or ``Authorization: Bearer``)
        on the app's queries; an empty list lifts the requirement.  The server keeps
        only their SHA-256 digests."""
        self._call("set_api_keys", {"app_name": app_name, "api_keys": list(api_keys)})

    def link_model_to_app(self, app_name: str, model_name: str) -> str:
        """Link a model to an app (linking it again changes nothing).  Under
        policy ``single`` the app's first linked model answers: ``get_app_info``
        names it (``answering_model``)."""
        return noted(
            self._call("add_model_links", {"app_name": app_name, "model_names": [model_name]})
        )

    def unlink_model_from_app(self, app_name: str, model_name: str) -> None:
        self._call("remove_model_links", {"app_name": app_name, "model_names": [model_name]})

    def get_all_apps(self, verbose: bool = False) -> list[Any]:
        """The apps' names; ``verbose``: their definitions, each with
        ``answering_model`` (see :meth:`get_app_info`)."""
        return list(self._call("get_all_applications", {"verbose": verbose}))

    def get_app_info(self, name: str) -> dict[str, Any] | None:
        """The app's definition and links, or None.  ``answering_model`` is the
        ``"model:version"`` that answers its queries under policy ``single`` (its
        first linked model, at its current version), None when none can or a
        policy chooses per query."""
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
        url = f"{self.cm.scheme}://{self.get_query_addr()}/metrics"
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with self._open(req, self.timeout) as resp:
                return dict(json.loads(resp.read()))
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise self.cm.unreachable(url, exc) from None

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
