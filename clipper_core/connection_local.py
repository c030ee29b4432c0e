"""``LocalContainerManager``: where a server runs on this machine, and its process.

It holds what a :class:`~clipper_core.connection.ClipperConnection` needs to
reach a server (address, ports, token, TLS) and, for ``start_clipper``, how to
start one as a background ``clipper serve`` process and learn the ports it bound.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from clipper_core.auth import (
    ADMIN_TOKEN_ENV,
    admin_token_from_env,
    admin_token_path,
    read_admin_token,
)
from clipper_core.config import default_state_dir, state_dir_is_named
from clipper_core.errors import ClipperError

__all__ = ["LocalContainerManager", "ServerNotRunning", "TlsMismatch"]


class ServerNotRunning(ClipperError):
    """No server answers on the management port."""

    http_status = 503
    kind = "not_running"


class TlsMismatch(ClipperError):
    """A server answers on the management port, but not as this connection
    speaks to it: TLS on one side only, or a certificate the given CA does not
    vouch for.  The message says what to pass."""

    http_status = 400
    kind = "tls_mismatch"


def speaks_tls(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether ``host:port`` completes a TLS handshake.  Only to explain a failed
    plain-HTTP call: nothing is sent, and the certificate is not checked here."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with probe.wrap_socket(sock, server_hostname=host):
                return True
    except (OSError, ValueError):
        return False


def tls_handshake_error(
    host: str, port: int, context: ssl.SSLContext, timeout: float = 2.0
) -> ssl.SSLError | None:
    """The error of a TLS handshake with ``host:port`` under ``context`` (None:
    it succeeded, or nothing answers).  Only to explain a failed call."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with context.wrap_socket(sock, server_hostname=host):
                return None
    except ssl.SSLError as exc:
        return exc
    except (OSError, ValueError):
        return None


class LocalContainerManager:
    """Where the server runs and how to start it: local processes on this machine.

    Fills the slot of Clipper's ``DockerContainerManager``: pass it to
    ``ClipperConnection``.

    Args:
        host: The server's address.
        query_port: Its query port (1337); 0: ``start_clipper`` starts a server
            on a free port and records the one it bound here.
        management_port: Its management port (1338); 0 as ``query_port``.
        state_dir: The server's state folder.  Default: ``$CLIPPER_STATE_DIR``,
            else a fresh temporary folder when ``query_port`` is 0 (removed by
            ``stop_all``), else ``~/.clipper_core``.
        grpc_port: The OIP gRPC port ``start_clipper`` asks for (0: a free one,
            None: none).  ``"auto"`` (the default): ``$CLIPPER_GRPC_PORT`` if set,
            else a free port when ``query_port`` is 0, else 8001.  After
            ``start_clipper`` it holds the port bound.
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
        grpc_port: int | Literal["auto"] | None = "auto",
        admin_token: str | None = None,
        tls: bool = False,
        tls_ca: str | None = None,
    ) -> None:
        self.host = host
        self.query_port = query_port
        self.management_port = management_port
        self.grpc_port = grpc_port
        #: Whether ``state_dir`` is a temporary folder of ours (``stop_all`` removes it).
        self.temporary_state = state_dir is None and not state_dir_is_named() and query_port == 0
        if self.temporary_state:
            state_dir = tempfile.mkdtemp(prefix="clipper-state-")
        # Absolute: the server's pid and log files, and the token file a 401
        # names, stay the same wherever the caller runs from later.
        self.state_dir = os.path.abspath(state_dir or default_state_dir())
        self._admin_token = admin_token if admin_token is not None else admin_token_from_env()
        #: Where the token comes from: "given", "env" or "file" (read when first needed).
        self.token_origin = "given" if admin_token else "env" if self._admin_token else "file"
        self.tls_ca = tls_ca or os.environ.get("CLIPPER_TLS_CA") or None
        self.tls = tls or self.tls_ca is not None
        self._log_start = 0  # where the log of the server launched last begins

    @property
    def admin_token(self) -> str | None:
        """The token sent to the management API (see the class's arguments)."""
        if not self._admin_token:
            self._admin_token = read_admin_token(self.state_dir)
        return self._admin_token or None

    @admin_token.setter
    def admin_token(self, value: str | None) -> None:
        self._admin_token = value
        self.token_origin = "given" if value else "file"

    def token_hint(self) -> str:
        """Where the token a server refused came from, and what to do instead."""
        fix = "pass the server's --state-dir, or set $CLIPPER_ADMIN_TOKEN to its token"
        token_file = admin_token_path(self.state_dir)
        if self.token_origin == "env":
            return f"the token sent came from ${ADMIN_TOKEN_ENV}; set it to the server's token"
        if self.token_origin == "given":
            return f"the token sent was given (--admin-token, admin_token=); {fix}"
        if self.admin_token is None:
            return f"no token was sent: none found in {token_file}; {fix}"
        return f"the token sent was read from {token_file}; {fix}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url_host(self) -> str:
        """``host`` as a URL writes it (an IPv6 address in brackets)."""
        host = self.host
        return f"[{host}]" if ":" in host and not host.startswith("[") else host

    def unreachable(self, url: str, exc: BaseException | None = None) -> ClipperError:
        """Why a management call to ``url`` failed with ``exc``: no server there
        (:class:`ServerNotRunning`), or one that speaks TLS when this connection
        does not, or the reverse, or whose certificate the CA given does not sign
        (:class:`TlsMismatch`, saying what to pass)."""
        reason = getattr(exc, "reason", exc)
        context = self.ssl_context()
        if exc is None and context is not None:  # a failed ping: find out why
            reason = tls_handshake_error(self.host, self.management_port, context)
        if isinstance(reason, ssl.SSLCertVerificationError):
            return TlsMismatch(
                f"the server at {url} speaks TLS, but its certificate is not signed by"
                f" the CA given ({self.tls_ca}): {reason.verify_message}; pass the CA"
                " that signed it with --tls-ca FILE (or $CLIPPER_TLS_CA)"
            )
        if self.tls and isinstance(reason, ssl.SSLError):
            return TlsMismatch(
                f"the server at {url} does not speak TLS ({reason.reason}): connect"
                " without --tls-ca (and unset $CLIPPER_TLS_CA)"
            )
        if not self.tls and speaks_tls(self.host, self.management_port):
            return TlsMismatch(
                f"a server answers at {self.host}:{self.management_port}, but in TLS"
                " (HTTPS): pass its CA certificate with --tls-ca FILE (or set"
                " $CLIPPER_TLS_CA; a self-signed certificate is its own CA)"
            )
        detail = "" if exc is None else f" ({exc})"
        return ServerNotRunning(
            f"clipper_core is not running at {url}{detail}; start it with `clipper start`"
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context (None for plain HTTP)."""
        if not self.tls:
            return None
        from clipper_core.tls import client_ssl_context

        try:
            return client_ssl_context(self.tls_ca)
        except ClipperError as exc:
            raise ClipperError(f"{exc} (given by --tls-ca or $CLIPPER_TLS_CA)") from None

    @property
    def pid_file(self) -> Path:
        """``<pid> <start time>`` of the server started here (the start time tells
        that process from a later one given the same pid)."""
        return Path(self.state_dir) / "server.pid"

    def started_pid(self) -> int | None:
        """The pid of the server started here while that process still runs;
        None (and the file removed) when it is gone or the pid names another
        process now (a server that crashed, a reboot since)."""
        try:
            fields = self.pid_file.read_text().split()
            pid = int(fields[0])
        except (OSError, ValueError, IndexError):
            return None
        started = process_start_time(pid)
        recorded = fields[1] if len(fields) > 1 else None
        if started is None or (recorded is not None and recorded != str(started)):
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    @property
    def log_file(self) -> Path:
        return Path(self.state_dir) / "server.log"

    @property
    def ready_file(self) -> Path:
        """Where a server started here writes the ports it bound."""
        return Path(self.state_dir) / "server.ready.json"

    # -- the server process -------------------------------------------------------

    def serve_argv(self, serve_args: Sequence[str] = (), python: str | None = None) -> list[str]:
        """The command line of a ``clipper serve`` for this address and state;
        ``serve_args`` (more ``clipper serve`` options) come last and win."""
        argv = [
            python or sys.executable,
            "-m",
            "clipper_core.cli",
            "serve",
            "--host",
            self.host,
            "--query-port",
            str(self.query_port),
            "--management-port",
            str(self.management_port),
            "--state-dir",
            str(self.state_dir),
            "--ready-file",
            str(self.ready_file),
        ]
        if self.grpc_port != "auto":
            argv += ["--grpc-port", str(-1 if self.grpc_port is None else self.grpc_port)]
        return argv + list(serve_args)

    def launch(
        self, serve_args: Sequence[str] = (), python: str | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``clipper serve`` in the background (its output to ``log_file``)."""
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        env = dict(os.environ)
        # server.log keeps every run: what this one says starts here.
        self._log_start = self.log_file.stat().st_size if self.log_file.exists() else 0
        if self._admin_token:  # given to this connection: the server requires the same
            env[ADMIN_TOKEN_ENV] = self._admin_token
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                self.serve_argv(serve_args, python),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid} {process_start_time(proc.pid) or ''}")
        return proc

    def read_ready(self) -> bool:
        """Take the bound ports from a started server's ready file; False until
        it is written."""
        try:
            ready = json.loads(self.ready_file.read_text())
        except (OSError, ValueError):
            return False
        self.query_port = int(ready["query_port"])
        self.management_port = int(ready["management_port"])
        self.grpc_port = ready.get("grpc_port")
        return True

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` of what the server launched last wrote to its log."""
        try:
            with open(self.log_file, "rb") as log:
                log.seek(self._log_start)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(nothing logged)"

    def exit_reason(self, returncode: int) -> str:
        """Why the server launched last exited: its own one-line error when it
        gave one, else the end of what it logged."""
        tail = self.log_tail()
        errors = [ln for ln in tail.splitlines() if ln.startswith("clipper: error: ")]
        if errors:
            return f"{errors[-1].removeprefix('clipper: error: ')} (log: {self.log_file})"
        return f"the server exited with code {returncode}:\n{tail}"

    def remove_temporary_state(self) -> None:
        """Remove the state folder when it is a temporary one of ours."""
        if self.temporary_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (``/proc``), or None
    when it does not run (or this system has no ``/proc``: then its mere
    existence is all that can be told)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        if os.path.isdir("/proc/self"):
            return None  # a Linux without that process
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime
