"""Server configuration: one dataclass, read from keyword arguments or the CLI."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from clipper_core.auth import admin_token_from_env, no_admin_token_from_env

#: The OIP gRPC port a server binds when neither its caller nor
#: ``$CLIPPER_GRPC_PORT`` names one, unless its query port is ephemeral (0).
DEFAULT_GRPC_PORT = 8001

#: A ``grpc_port`` that is decided from the rest of the settings (see
#: :meth:`ServerConfig.resolved_grpc_port`).
GrpcPort = int | Literal["auto"] | None


def grpc_port_from_env() -> int | Literal["auto"] | None:
    """``$CLIPPER_GRPC_PORT``: a port number, 0 for an ephemeral one, ``off`` for
    none; unset: ``"auto"``."""
    raw = os.environ.get("CLIPPER_GRPC_PORT", "").strip().lower()
    if not raw:
        return "auto"
    if raw in ("off", "none", "-1"):
        return None
    return int(raw)


def default_state_dir() -> str:
    """``$CLIPPER_STATE_DIR``, else ``~/.clipper_core``."""
    return os.environ.get("CLIPPER_STATE_DIR") or str(Path.home() / ".clipper_core")


def state_dir_is_named() -> bool:
    """Whether the environment names a state folder (``$CLIPPER_STATE_DIR``)."""
    return bool(os.environ.get("CLIPPER_STATE_DIR"))


@dataclass
class ServerConfig:
    """Everything a ``ClipperServer`` needs to start.

    Attributes:
        host: address both HTTP ports bind to (loopback by default).
        query_port: Clipper's query REST port (0 picks a free port).
        management_port: the admin REST port (0 picks a free port).
        grpc_port: the Open Inference Protocol gRPC port (0 picks a free port;
            None serves no gRPC).  ``"auto"`` (the default): ``$CLIPPER_GRPC_PORT``
            if set, else a free port when ``query_port`` is 0, else 8001.
        grpc_transport: what serves the gRPC port: ``"auto"`` (the built-in
            HTTP/2 server without TLS, ``grpc.aio`` with it), ``"h2"`` (the
            built-in one; cleartext only) or ``"aio"`` (always ``grpc.aio``).
        state_dir: folder holding the SQLite store and the deployed models' files.
            ``""`` (the default): ``$CLIPPER_STATE_DIR`` if set, else a fresh
            temporary folder when ``query_port`` is 0 (removed when the server
            stops), else ``~/.clipper_core``; ``ClipperServer`` resolves it.
        state_path: the SQLite file; ``":memory:"`` keeps nothing across restarts.
        state_url: a Redis URL (``redis://host:port/db``) whose desired state
            several frontends share; None (the default): the SQLite file
            (``state_path``), this process alone.  Needs ``clipper_core[redis]``.
        lease_ttl: with ``state_url``, seconds the replica lease lasts unrenewed:
            one frontend holds it and starts the containers; when it dies,
            another takes over within about this long.
        max_body_size: largest accepted request body, in bytes (413 above it).
        queue_capacity: per model version; a full queue answers 503 at once.
        max_batch_size: upper bound of the adaptive batch size.
        batch_timeout: seconds a model may take for one batch before it fails.
        replica_start_timeout: seconds a container may take to become ready.
        replica_standby: with the local manager, when to keep one warm standby
            container process per model version, which takes a dying replica's
            place at once (one more process, idle until promoted):
            ``"after-crash"`` (from the version's first replica crash on),
            ``"always"`` or ``"off"``.
        cache_bytes: byte budget of the prediction cache (0 disables it); an entry is
            charged for all it keeps: its rows, the items of a list or dict output.
        python: interpreter that runs model containers.
        access_log: log one line per HTTP response on both ports (logger
            ``clipper_core.http.access``; event ``http_access`` in JSON logs).
        max_header_size: largest request line plus headers, in bytes (431 above it).
        max_json_depth: deepest JSON nesting a query body may have (400 above it).
        max_inflight_body_bytes: the query port's memory budget for request bodies,
            over all connections, from headers to answer: a request whose body does
            not fit is answered 503 before its body is read (0: no budget).  The
            gRPC port (built-in HTTP/2 transport) draws on the same budget: a
            request whose bytes do not fit is answered UNAVAILABLE.
        max_connections: client connections the query port keeps open at once;
            one more is answered 503 and closed (0: no limit).  The gRPC port
            (built-in HTTP/2 transport) has a limit of its own of this size: one
            more gets a GOAWAY and is closed.
        min_body_rate: bytes per second an incomplete request must keep arriving
            at on the query port (measured over 10 s); slower ones get 408 and are
            closed, so a trickle cannot hold a partial body (0: off).
        reads_per_turn: socket reads the query port handles per event-loop turn;
            beyond them a connection waits for a later turn, in arrival order, so
            that a storm of requests cannot hold the loop for tens of
            milliseconds while admitted queries wait (0: no bound).
        admission_control: refuse (503 + Retry-After) an input whose expected
            queueing wait exceeds its remaining deadline.
        client_max_concurrency: requests one client (API key, else remote address)
            may have in flight on the query port; 0 for no limit (429 above it).
        client_rate_limit: requests per second one client may start; 0 for none.
        client_burst: the rate limit's burst size (0: the rate, at least 1).
        admin_token: every management call needs ``Authorization: Bearer
            <token>`` (default: ``$CLIPPER_ADMIN_TOKEN``).  None: the first start
            generates one into ``<state_dir>/admin_token`` (0600), which the Python
            API and the CLI read.  ``""`` is an error, never "no authentication".
        insecure_no_admin_token: serve the management API without any token
            (default ``$CLIPPER_INSECURE_NO_ADMIN_TOKEN``); any local process can
            then deploy code.  Logged as a warning at every start.
        allowed_hosts: names the management port accepts in ``Host`` besides its
            bound address (and the loopback names when bound to loopback); other
            names are refused, which stops DNS-rebinding pages.
        tls_cert: PEM certificate; with ``tls_key``, both HTTP ports speak TLS.
        tls_key: PEM private key of ``tls_cert``.
        shutdown_grace: seconds a graceful stop (SIGTERM) lets in-flight requests
            finish before closing what remains.
        replica_tls_ca: PEM CA that remote replicas' certificates chain to
            (replicas registered with ``tls``, addresses ``grpcs://``); None: the
            system's CAs.
        replica_tls_cert: PEM certificate the frontend presents to remote
            replicas that require one (``--tls-client-ca``); with ``replica_tls_key``.
        replica_tls_key: PEM private key of ``replica_tls_cert``.
        replica_secret_file: the secret the per-model replica tokens derive from
            (see ``clipper_core.replica_tokens``); None: ``<state_dir>/replica_secret``,
            made on first start.  Frontends sharing a store must share it.
        container_manager: what runs the model replicas: ``"local"`` (child
            processes, the default) or ``"kubernetes"`` (a StatefulSet per model
            version in the cluster this process runs in, else ``$KUBECONFIG``'s;
            needs ``clipper_core[kubernetes]``).
        kubernetes_namespace: with ``"kubernetes"``: the namespace of the model pods.
        kubernetes_image: with ``"kubernetes"``: the model-container image
            (None: ``clipper-core/model-container:<version>``).
        kubernetes_bundle_url: with ``"kubernetes"``: where model pods fetch their
            bundles, with ``{model}`` and ``{version}`` (None: this frontend's
            management API through the ``clipper-frontend`` Service).
        kubernetes_bundle_secret: with ``"kubernetes"``: the Secret (key
            ``token``) model pods fetch bundles with (None: ``clipper-bundle-token``).
        kubernetes_part_of: with ``"kubernetes"``: the installation the model
            pods belong to (``app.kubernetes.io/part-of``); two in one namespace
            need two values.
        kubernetes_container_port: with ``"kubernetes"``: the model containers'
            gRPC port.
        kubernetes_startup_seconds: with ``"kubernetes"``: how long a model pod
            may take to load its model (the startup probe's budget).
        workers: frontend processes serving the query ports (Clipper REST, OIP
            HTTP and gRPC), which they share with ``SO_REUSEPORT``: this one and
            ``workers - 1`` query workers it starts and supervises (see
            ``clipper_core.frontend_workers``).  1 (the default): this process
            alone; 0: one per CPU.
        reply_spin_us: microseconds the event loop polls (instead of sleeping)
            for the answer of a replica on this host's local socket, while that
            replica's recent answers came within it: a sleeping loop must be woken
            by the replica's write, which on a VM costs both processes CPU and the
            answer tens of microseconds.  0: never poll.  Never on a host where the
            frontend may use one CPU only.
        gc_freeze: once started, exempt every object then alive from Python's
            cyclic garbage collector (``gc.freeze``; given back at stop), so that
            a full collection under load scans only what came since: 0.3 ms
            instead of 10-25 ms with the event loop stopped.  Off: leave the
            process's collector alone (an embedding application tuning its own).
        worker_id: 0 for the server itself; ``k >= 1`` in the settings of query
            worker ``k`` (set by the server that starts it, never by hand).
    """

    host: str = "127.0.0.1"
    query_port: int = 1337
    management_port: int = 1338
    grpc_port: GrpcPort = "auto"
    grpc_transport: str = "auto"
    state_dir: str = ""
    state_path: str | None = None
    state_url: str | None = None
    lease_ttl: float = 5.0
    max_body_size: int = 10 * 1024 * 1024
    queue_capacity: int = 10_000
    max_batch_size: int = 256
    batch_timeout: float = 30.0
    replica_start_timeout: float = 60.0
    replica_standby: str = "after-crash"
    cache_bytes: int = 64 * 1024 * 1024
    python: str = ""
    access_log: bool = False
    max_header_size: int = 64 * 1024
    max_json_depth: int = 64
    max_inflight_body_bytes: int = 128 * 1024 * 1024
    max_connections: int = 4096
    min_body_rate: int = 1024
    # http.turn_budget.DEFAULT_READS_PER_TURN, written out so that importing the
    # configuration (the client library does) loads no HTTP server; a test keeps
    # the two equal.
    reads_per_turn: int = 64
    admission_control: bool = True
    client_max_concurrency: int = 0
    client_rate_limit: float = 0.0
    client_burst: int = 0
    admin_token: str | None = field(default_factory=admin_token_from_env, repr=False)
    insecure_no_admin_token: bool = field(default_factory=no_admin_token_from_env)
    allowed_hosts: list[str] = field(default_factory=list)
    tls_cert: str | None = None
    tls_key: str | None = None
    shutdown_grace: float = 30.0
    replica_tls_ca: str | None = None
    replica_tls_cert: str | None = None
    replica_tls_key: str | None = None
    replica_secret_file: str | None = None
    container_manager: str = "local"
    kubernetes_namespace: str = "default"
    kubernetes_image: str | None = None
    kubernetes_bundle_url: str | None = None
    kubernetes_bundle_secret: str | None = None
    kubernetes_part_of: str = "clipper"
    kubernetes_container_port: int = 7000
    kubernetes_startup_seconds: int = 300
    workers: int = 1
    # local_channel.DEFAULT_REPLY_SPIN_US, written out so that importing the
    # configuration loads no data-plane module; a test keeps the two equal.
    reply_spin_us: int = 250
    gc_freeze: bool = True
    worker_id: int = 0

    def resolved_grpc_port(self) -> int | None:
        """The gRPC port to bind (None: none), ``"auto"`` decided (see ``grpc_port``)."""
        if self.grpc_port != "auto":
            return self.grpc_port
        from_env = grpc_port_from_env()
        if from_env != "auto":
            return from_env
        return 0 if self.query_port == 0 else DEFAULT_GRPC_PORT

    def is_query_worker(self) -> bool:
        """Whether these are a query worker's settings (it serves the query ports
        only, follows the store, and starts no replicas)."""
        return self.worker_id > 0

    def local_replica_tokens(self) -> bool:
        """Whether the replicas this frontend's local manager starts require a
        token on their plaintext port: when every frontend that calls them can
        derive it from the same secret (one frontend and its query workers, or
        frontends of a shared ``state_url`` that must then all be given the same
        ``replica_secret_file``)."""
        return self.container_manager == "local" and (
            self.state_url is None or self.replica_secret_file is not None
        )

    def publishes_endpoints(self) -> bool:
        """Whether the replicas' addresses go into the store for other frontends
        (a shared ``state_url``, or query workers following this process)."""
        return self.state_url is not None or (self.workers > 1 and not self.is_query_worker())

    def wants_temporary_state(self) -> bool:
        """Whether the state goes to a temporary folder: no folder is named and
        the query port is ephemeral (a script or a test, not a service)."""
        return not self.state_dir and not state_dir_is_named() and self.query_port == 0

    def resolved_state_path(self) -> str:
        if self.state_path is not None:
            return self.state_path
        return str(Path(self.state_dir or default_state_dir()) / "state.sqlite3")

    def models_dir(self) -> Path:
        return Path(self.state_dir or default_state_dir()) / "models"

    def resolved_replica_secret_file(self) -> Path:
        if self.replica_secret_file is not None:
            return Path(self.replica_secret_file)
        return Path(self.state_dir or default_state_dir()) / "replica_secret"
