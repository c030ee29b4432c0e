"""Command line of a model container: load a model, serve it, register it.

::

    python -m model_containers --model-name NAME --model-version V \\
        [--input-type {ints,floats,doubles,strings,bytes}] \\
        (--closure FILE.pkl | --model-class package.module:ClassName [--model-path DIR]
         | --adapter {sklearn,pytorch,onnx,xgboost,pyspark,tensorflow,keras} --model-path DIR) \\
        [--bundle-url URL --bundle-token-file FILE [--frontend-ca CA.pem]] \\
        [--tls-cert CERT.pem --tls-key KEY.pem [--tls-client-ca CA.pem] --token-file FILE] \\
        [--health-port PORT] \\
        [--deploy-env JSON] \\
        [--host 127.0.0.1] [--port 0] [--advertise-address HOST:PORT] \\
        [--register-url http://127.0.0.1:1338] [--register-token-file PATH] \\
        [--register-timeout 30] [--replica-id R] [--max-workers 1] [--grace 2]

Once the model is loaded and the server listens, one line
``CLIPPER_CONTAINER_READY <address>`` is printed to stdout.  With
``--register-url`` the container then registers with the frontend (see
``model_containers.registration``); a rejected or impossible registration stops
the container with exit status 1.  SIGTERM or SIGINT stop it gracefully (health
NOT_SERVING, in-flight batches get ``--grace`` seconds) with exit status 0.
Logs go to stderr.

A replica on another host than its frontend fetches its model with
``--bundle-url`` instead of a path (see ``model_containers.bundle_fetch``: a
closure bundle needs no other source option, a model folder bundle is the
``--model-path`` of ``--adapter`` or ``--model-class``), and serves over TLS
with ``--tls-cert``, refusing calls without its ``--token-file`` token (see
``model_containers.grpc_auth``); the local socket is then off.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from model_containers import grpc_auth
from model_containers.model import INPUT_TYPES, ClosureModel, Model
from model_containers.registration import register
from model_containers.remote_options import (
    add_remote_options,
    check_remote_options,
    fetch_bundle_for,
    transport_security,
)
from model_containers.server import ContainerInfo, ContainerServer, exception_line

log = logging.getLogger("model_containers")

READY_MARKER = "CLIPPER_CONTAINER_READY"

# How long, after the gRPC server stopped, to wait for a model call that is
# still running before leaving without it.
_THREAD_JOIN_S = 1.0

# Run on every way out, os._exit included (the fetched bundle's folder).
_CLEANUPS: list[Callable[[], None]] = []


class ModelLoadError(Exception):
    """The model could not be imported, unpickled or instantiated."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_containers",
        description="Serve one model version over gRPC for clipper_core.",
    )
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--model-version", required=True)
    parser.add_argument(
        "--input-type",
        choices=INPUT_TYPES,
        help="required unless the model class declares input_type",
    )
    # One of them, or --bundle-url (checked in main).
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--closure",
        metavar="FILE.pkl",
        help="a cloudpickled callable f(inputs: list) -> list (or a pickled Model instance)",
    )
    source.add_argument(
        "--model-class",
        metavar="MODULE:NAME",
        help="a Model subclass (or instance) to import, e.g. mypkg.models:Scorer",
    )
    source.add_argument(
        "--adapter",
        metavar="FRAMEWORK",
        help="a framework adapter (model_containers.adapters) loading --model-path, a"
        " directory written by a clipper_core deployer",
    )
    parser.add_argument(
        "--deploy-env",
        metavar="JSON",
        help="Python and package versions recorded at deploy time; a mismatch stops the"
        " container before the model loads (see model_containers.environment)",
    )
    parser.add_argument("--model-path", metavar="DIR", help="set as model.model_path before load()")
    add_remote_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--advertise-address",
        metavar="HOST:PORT",
        help="address to print and register, when the frontend must use another one "
        "than the bound host:port (e.g. listening on 0.0.0.0)",
    )
    parser.add_argument(
        "--local-socket",
        default="auto",
        metavar="auto|off|PATH",
        help="also answer Predict on a Unix socket, for a frontend on this host (much "
        "cheaper than gRPC); auto: a private temporary path (default)",
    )
    parser.add_argument("--register-url", metavar="URL", help="frontend management base URL")
    parser.add_argument(
        "--register-token",
        default=os.environ.get("CLIPPER_ADMIN_TOKEN") or None,
        help="bearer token for registration (default: $CLIPPER_ADMIN_TOKEN; a token on"
        " the command line is visible to every user of the host: prefer the variable"
        " or --register-token-file)",
    )
    parser.add_argument(
        "--register-token-file",
        metavar="PATH",
        help="a file holding the registration token (replaces --register-token): the"
        " model version's register_token (get_replica_token), or the management token",
    )
    parser.add_argument(
        "--register-timeout", type=float, default=30.0, help="seconds to keep retrying"
    )
    parser.add_argument("--replica-id", default="")
    parser.add_argument(
        "--max-workers", type=int, default=1, help="model calls that may run at once"
    )
    parser.add_argument(
        "--grace", type=float, default=2.0, help="seconds for in-flight RPCs on stop"
    )
    parser.add_argument("--max-message-mb", type=int, default=64)
    parser.add_argument("--log-level", default="INFO")
    return parser


def load_model(args: argparse.Namespace) -> Model:
    """Import or unpickle the model (``load()`` is not called yet)."""
    obj: Any
    if args.adapter:
        from model_containers.adapters import adapter_class

        if not args.model_path:
            raise ModelLoadError(f"--adapter {args.adapter} needs --model-path DIR")
        try:
            obj = adapter_class(args.adapter)()
        except Exception as exc:
            raise ModelLoadError(
                f"cannot load adapter {args.adapter}: {exception_line(exc)}"
            ) from exc
    elif args.closure:
        import cloudpickle

        try:
            with open(args.closure, "rb") as f:
                obj = cloudpickle.load(f)
        except Exception as exc:
            raise ModelLoadError(f"cannot unpickle {args.closure}: {exception_line(exc)}") from exc
    else:
        module_name, sep, attr = args.model_class.partition(":")
        if not (sep and module_name and attr):
            raise ModelLoadError("--model-class must look like package.module:ClassName")
        try:
            obj = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
            if isinstance(obj, type):
                obj = obj()
        except Exception as exc:
            raise ModelLoadError(f"cannot load {args.model_class}: {exception_line(exc)}") from exc
    if isinstance(obj, Model):
        return obj
    if callable(obj):
        return ClosureModel(obj)
    raise ModelLoadError(
        f"{args.closure or args.model_class} is a {type(obj).__name__}: expected a "
        "model_containers.Model subclass or a callable f(inputs) -> outputs"
    )


def _check_deploy_env(text: str) -> str:
    """'' when this environment can run the model, else the message to print."""
    import json

    from model_containers.environment import check

    try:
        recorded = json.loads(text)
    except ValueError as exc:
        return f"--deploy-env is not valid JSON: {exc}"
    report = check(recorded if isinstance(recorded, dict) else {})
    for warning in report.warnings:
        log.warning("deploy environment differs: %s", warning)
    return report.message() if report.errors else ""


def _resolve_input_type(parser: argparse.ArgumentParser, cli: str | None, model: Model) -> str:
    declared = getattr(model, "input_type", None)
    if declared is not None and declared not in INPUT_TYPES:
        parser.error(f"{type(model).__name__}.input_type is {declared!r}, not one of {INPUT_TYPES}")
    if cli and declared and cli != declared:
        parser.error(
            f"--input-type is {cli} but {type(model).__name__} declares input_type={declared!r}"
        )
    resolved = cli or declared
    if not resolved:
        parser.error("--input-type is required (the model does not declare input_type)")
    return str(resolved)


class _StopEvents:
    """Why the container stops: a signal, a fatal registration error, the exit of
    the frontend that started it.  ``wait()`` blocks the main thread until one comes.

    The main thread waits in ``os.read`` on a pipe, not on a lock: a signal sent to
    the process may be taken by any thread that does not block it (the gRPC
    poller, the local socket's accept thread), and CPython runs the Python handler
    only when the main thread next runs bytecode, which a thread blocked on a lock
    never does (it gets no EINTR).  ``signal.set_wakeup_fd`` makes the C-level
    handler write to the pipe from whichever thread took the signal.  Every event
    is a queue entry followed by a byte, so a byte that comes first only means
    "look again".
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous: dict[int, Any] = {}
        # Reentrant: a second signal's handler may run inside the first one's put().
        self._lock = threading.RLock()
        self._closed = False
        _CLEANUPS.append(self._close)

    def put(self, kind: str, detail: str) -> None:
        """Record an event and wake ``wait()``; safe in a signal handler and a thread."""
        with self._lock:  # not after _close(): the number may name another file
            if self._closed:
                return
            self._queue.put((kind, detail))
            try:
                os.write(self._write_fd, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already: the reader will look

    def install_signal_handlers(self) -> None:
        """Stop on SIGTERM and SIGINT (main thread only, as Python requires)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            self.put("signal", signal.Signals(signum).name)

        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, on_signal)

    def wait(self) -> tuple[str, str]:
        while True:
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                # A signal's handler runs before the loop's next turn, once the
                # read returned; PEP 475 retries the read on EINTR.
                os.read(self._read_fd, 512)

    def _close(self) -> None:
        """Give the signals back, then close the pipe; a later put() (the parent
        watch, during the interpreter's exit) writes nothing."""
        if self._previous:
            if threading.current_thread() is not threading.main_thread():
                return  # only the main thread may: leave the pipe to the exit
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(-1)
        with self._lock:  # taken after the handlers are gone: none can wait on it
            self._closed = True
            os.close(self._read_fd)
            os.close(self._write_fd)


def _watch_parent(events: _StopEvents) -> None:
    """Stop when the frontend that started us exits (``CLIPPER_PARENT_PID``), so
    that a killed frontend leaves no container behind.  On Linux the frontend also
    sets a parent-death signal; this is the portable fallback."""
    raw = os.environ.get("CLIPPER_PARENT_PID", "")
    if not raw.isdigit() or os.getppid() != int(raw):
        return  # not started by a frontend (or through a wrapper): nothing to watch
    parent = int(raw)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        events.put("signal", f"exit of the parent frontend (pid {parent})")

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _leave(code: int) -> int:
    """Return ``code``, or leave at once if a model call is still running."""
    deadline = time.monotonic() + _THREAD_JOIN_S
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [
        t.name
        for t in threading.enumerate()
        if t is not threading.current_thread() and not t.daemon and t.is_alive()
    ]
    if stuck:
        log.warning("threads still running after the grace period (%s); exiting", stuck)
        _run_cleanups()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _run_cleanups() -> None:
    while _CLEANUPS:
        _CLEANUPS.pop()()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a container until SIGTERM/SIGINT; return the exit status."""
    try:
        return _main(argv)
    finally:
        _run_cleanups()


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s model_containers[%(process)d] %(message)s",
    )
    if args.max_workers < 1:
        parser.error("--max-workers must be at least 1")
    check_remote_options(parser, args)
    local_security = grpc_auth.local_token_security()  # before any model code runs
    if args.register_token_file:
        try:
            token = grpc_auth.read_secret(args.register_token_file, "registration token file")
        except grpc_auth.ConfigError as exc:
            print(f"model_containers: {exc}", file=sys.stderr, flush=True)
            return 1
        args.register_token = token.decode("utf-8", "replace")

    events = _StopEvents()
    events.install_signal_handlers()
    _watch_parent(events)

    if args.deploy_env:
        failed = _check_deploy_env(args.deploy_env)
        if failed:
            print(f"model_containers: {failed}", file=sys.stderr, flush=True)
            return 1
    if args.bundle_url:
        failed = fetch_bundle_for(args, _CLEANUPS.append)
        if failed:
            print(f"model_containers: {failed}", file=sys.stderr, flush=True)
            return 1
    try:
        model = load_model(args)
    except ModelLoadError as exc:
        if exc.__cause__ is not None:
            log.debug("".join(traceback.format_exception(exc.__cause__)))
        print(f"model_containers: {exc}", file=sys.stderr, flush=True)
        return 1
    input_type = _resolve_input_type(parser, args.input_type, model)
    info = ContainerInfo(
        model_name=args.model_name,
        model_version=str(args.model_version),
        input_type=input_type,
        replica_id=args.replica_id,
    )
    try:
        security: dict[str, Any] = {
            "local_socket": None if args.local_socket == "off" else args.local_socket,
            # TLS brings its own token; the local manager's is for plaintext.
            **(transport_security(args) or local_security),
        }
        server = ContainerServer(
            info,
            host=args.host,
            port=args.port,
            max_workers=args.max_workers,
            max_message_bytes=args.max_message_mb * 1024 * 1024,
            health_port=args.health_port,
            **security,
        )
        server.start()  # health answers NOT_SERVING while the model loads
    except (OSError, grpc_auth.ConfigError) as exc:
        print(f"model_containers: {exc}", file=sys.stderr, flush=True)
        return 1

    try:
        if args.model_path is not None:
            model.model_path = args.model_path
        model.load()
    except Exception as exc:
        log.error("model load() failed:\n%s", "".join(traceback.format_exception(exc)))
        print(f"model_containers: load() failed: {exception_line(exc)}", file=sys.stderr)
        server.stop(0)
        return _leave(1)
    server.serve(model)

    address = args.advertise_address or server.address
    print(f"{READY_MARKER} {address}", flush=True)
    log.info(
        "serving %s:%s (%s inputs, %s) on %s",
        info.model_name,
        info.model_version,
        input_type,
        model.platform,
        address,
    )

    stopping = threading.Event()
    if args.register_url:
        payload = {
            "model_name": info.model_name,
            "model_version": info.model_version,
            "input_type": input_type,
            "address": address,
            "replica_id": info.replica_id,
            "pid": os.getpid(),
        }
        if args.tls_cert:
            payload["tls"] = True  # the frontend connects with TLS and the token

        def register_in_background() -> None:
            result = register(
                args.register_url,
                payload,
                timeout=args.register_timeout,
                token=args.register_token,
                stopping=stopping,
                ca_file=args.frontend_ca,
            )
            if not result.ok and not result.stopped:
                events.put("fatal", result.message)

        threading.Thread(
            target=register_in_background, name="container-register", daemon=True
        ).start()

    kind, detail = events.wait()
    code = 0
    if kind == "fatal":
        print(f"model_containers: {detail}", file=sys.stderr, flush=True)
        code = 1
    else:
        log.info("%s received; stopping (grace %.1f s)", detail, args.grace)
    stopping.set()
    server.stop(args.grace)
    return _leave(code)
