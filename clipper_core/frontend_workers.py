"""Query workers: more frontend processes on the same query ports.

One frontend process parses, admits, batches and answers every query on one
event loop, so it uses one core.  With ``workers = N`` the server (the
*primary*) starts ``N - 1`` query workers after it has restored its state and
started the replicas.  Each worker is a ``ClipperServer`` of its own
(:mod:`clipper_core.query_worker`) that

* binds the query ports (Clipper REST and OIP over HTTP, OIP gRPC) with
  ``SO_REUSEPORT``, as the primary does: the kernel spreads new connections over
  the processes, so a connection stays with the process that accepted it;
* serves no management port: deploys, scaling and the container manager stay
  with the primary, the only writer of the store;
* restores apps, models, links and pipelines from the same store and follows its
  change log (a SQLite file is polled; a shared ``state_url`` streams), and
  connects to the primary's replicas through the endpoint records the primary
  publishes there (containers accept several frontends);
* has its own batching queues, prediction cache, admission figures and metrics.

The primary restarts a worker that exits, stops them (SIGTERM, then SIGKILL
after the grace) before its own containers when it stops, and a worker exits
when the primary does: it asks the kernel for SIGTERM at its parent's death
(``PR_SET_PDEATHSIG``) and also stops when its stdin, a pipe from the primary,
closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from clipper_core.config import ServerConfig
from clipper_core.control.reconcile import DataPlaneReconciler
from clipper_core.embedded import WORKER_START_TIMEOUT
from clipper_core.errors import BadInput, ClipperError
from clipper_core.http import Request, Response, Router, json_response
from clipper_core.listeners import Listeners
from clipper_core.logs import TextFormatter, log_event
from clipper_core.managers.base import ReplicaEvent, ReplicaStatus
from clipper_core.store.base import ChangeFeed, DesiredStateReader, StateStore
from clipper_core.store.feed import SqlitePollingFeed
from clipper_core.store.records import ModelRecord

__all__ = [
    "FrontendWorkers",
    "NeverHeld",
    "NoContainers",
    "forget_published_endpoints",
    "install_identity",
    "query_feed",
    "replicas_connected",
    "resolve_workers",
]

log = logging.getLogger("clipper_core.server")

#: The module a query worker runs (``python -m``).
WORKER_MODULE = "clipper_core.query_worker"
#: Seconds a restarted worker waits first, and at most after quick failures.
RESTART_BACKOFF = (0.5, 30.0)
#: A worker that ran this long before it exited is restarted without delay growth.
STABLE_AFTER = 30.0


def resolve_workers(workers: int) -> int:
    """The frontend processes to run: ``workers``, or one per CPU for 0.

    Raises:
        BadInput: ``workers`` is negative.
    """
    if workers < 0:
        raise BadInput(f"workers must be >= 0 (0: one per CPU), got {workers}")
    return workers or os.cpu_count() or 1


class NeverHeld:
    """The replica lease of a query worker: the primary owns the replicas."""

    owner = "query worker"

    def held(self) -> bool:
        return False

    async def acquire(self) -> bool:
        return False

    async def renew(self) -> bool:
        return False

    async def release(self) -> None:
        return None

    def holder(self) -> str | None:
        return "the primary frontend"


class NoContainers:
    """The container manager of a query worker: it runs no replicas (the
    primary's are reached through their endpoint records)."""

    async def scale(self, model: ModelRecord, n: int) -> None:
        raise ClipperError("a query worker starts no replicas")

    async def wait_ready(self, name: str, version: str, replica_id: str, timeout: float) -> str:  # noqa: ASYNC109
        raise ClipperError("a query worker starts no replicas")

    async def restart(self, name: str, version: str, replica_id: str) -> None:
        return None

    def list(self, name: str | None = None, version: str | None = None) -> list[ReplicaStatus]:
        return []

    def subscribe(self, callback: Callable[[ReplicaEvent], None]) -> None:
        return None

    async def close(self) -> None:
        return None


def query_feed(cfg: ServerConfig, store: StateStore) -> ChangeFeed:
    """The change feed a frontend follows: the store's own, except for a query
    worker on the primary's SQLite file, which polls the change log (the
    store's own feed carries this process's writes only)."""
    if cfg.is_query_worker() and cfg.state_url is None:
        return SqlitePollingFeed(store)
    return store.feed()


async def replicas_connected(
    reader: DesiredStateReader, endpoints: DataPlaneReconciler, within: float
) -> None:
    """Wait until this frontend is connected to every replica whose endpoint the
    store records (what a query worker waits for before it takes connections),
    or ``within`` seconds; the connects still running go on in the background."""
    records = await asyncio.to_thread(reader.list_endpoints)
    waits = asyncio.gather(
        *(endpoints.connected(e.model, e.version, e.replica_id, e.address) for e in records),
        return_exceptions=True,
    )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(waits, within)


def forget_published_endpoints(store: StateStore) -> None:
    """Drop the endpoint records a primary published for its own replicas
    (numbered, of a model version it starts containers for) in an earlier run:
    those replicas ended with that run, and on a store nobody else writes this
    process is their only publisher (replicas registered by hand stay)."""
    managed = {(m.name, m.version) for m in store.list_models() if not m.registered_by_hand}
    for e in store.list_endpoints():
        if e.replica_id.isdigit() and (e.model, e.version) in managed:
            store.delete_endpoint(e.model, e.version, e.replica_id)


def install_identity(
    router: Router, workers: FrontendWorkers, listeners: Callable[[], Listeners | None]
) -> None:
    """``GET /frontend`` on the query port: which process answered on this
    connection (``worker`` 0 is the primary), the URL of its own port
    (``direct_url``; null for a single process), and on the primary its workers.

    Args:
        router: The query port's routes.
        workers: This process's (its ``describe`` is empty on a worker).
        listeners: This process's listeners, once bound.
    """

    def frontend(request: Request, params: dict[str, str]) -> Response:
        bound = listeners()
        direct = None if bound is None or bound.direct is None else bound.direct.port
        body: dict[str, Any] = {
            "worker": workers.worker_id,
            "pid": os.getpid(),
            "direct_url": workers.url(direct),
        }
        if workers.worker_id == 0:
            body["workers"] = workers.describe()
        return json_response(body)

    router.add("GET", "/frontend", frontend)


def _log_settings() -> tuple[str, str]:
    """This process's log level and format, for its workers to log alike."""
    root = logging.getLogger()
    text = any(isinstance(h.formatter, TextFormatter) for h in root.handlers)
    return logging.getLevelName(root.getEffectiveLevel()).lower(), "text" if text else "json"


@dataclasses.dataclass
class _Worker:
    worker_id: int
    process: asyncio.subprocess.Process
    direct_port: int
    started_at: float
    restarts: int = 0


class FrontendWorkers:
    """Starts, restarts and stops the query workers of a primary.

    Args:
        cfg: The primary's settings (its ``workers`` counts the primary).
        start_timeout: Seconds a worker may take to serve.

    Raises:
        BadInput: Workers on a store that only this process sees (an in-memory
            SQLite database): they would serve none of its apps.
    """

    def __init__(self, cfg: ServerConfig, *, start_timeout: float = WORKER_START_TIMEOUT) -> None:
        path = cfg.resolved_state_path()
        if (
            cfg.workers > 1
            and cfg.state_url is None
            and (path == ":memory:" or (path.startswith("file:") and "mode=memory" in path))
        ):
            raise BadInput(
                f"workers={cfg.workers} needs a state file or a state_url that the query"
                f" workers can open: state_path {path!r} is this process's alone"
            )
        self._cfg = cfg
        #: This process's worker number (0: the primary).
        self.worker_id = cfg.worker_id
        self._query_port = 0
        self._grpc_port: int | None = None
        self._start_timeout = start_timeout
        self._workers: dict[int, _Worker] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False

    def settings(self, worker_id: int) -> dict[str, Any]:
        """What worker ``worker_id`` is told on its stdin: the primary's settings
        on the ports it bound, and how to log."""
        config = dataclasses.asdict(self._cfg)
        config.update(
            worker_id=worker_id,
            query_port=self._query_port,
            grpc_port=self._grpc_port,
            management_port=0,
        )
        level, fmt = _log_settings()
        return {"config": config, "log_level": level, "log_format": fmt}

    async def start(self, query_port: int, grpc_port: int | None) -> None:
        """Start every worker on the ports the primary bound (``grpc_port``: None
        when it serves no gRPC) and return once each serves.

        Raises:
            ClipperError: A worker exited or did not serve in time (the others
                are stopped).
        """
        self._query_port, self._grpc_port = query_port, grpc_port
        started = await asyncio.gather(
            *(self._spawn(k) for k in range(1, self._cfg.workers)), return_exceptions=True
        )
        for worker in started:
            if isinstance(worker, _Worker):
                self._workers[worker.worker_id] = worker
        failed = [exc for exc in started if isinstance(exc, BaseException)]
        if failed or self._stopping:  # stopping: the server stopped while they started
            await self.stop(0.0)
            if failed:
                raise failed[0]
            return
        loop = asyncio.get_running_loop()
        self._watchers = [loop.create_task(self._supervise(k)) for k in self._workers]

    def url(self, port: int | None) -> str | None:
        """The URL of ``port`` on this server's address (None for None)."""
        if port is None:
            return None
        scheme = "https" if self._cfg.tls_cert else "http"
        return f"{scheme}://{self._cfg.host}:{port}"

    def describe(self) -> list[dict[str, Any]]:
        """Each worker's number, pid, restarts so far and own query URL."""
        return [
            {
                "worker": w.worker_id,
                "pid": w.process.pid,
                "restarts": w.restarts,
                "direct_url": self.url(w.direct_port),
            }
            for w in sorted(self._workers.values(), key=lambda w: w.worker_id)
        ]

    async def _spawn(self, worker_id: int) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            WORKER_MODULE,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(self.settings(worker_id)).encode() + b"\n")
            await process.stdin.drain()
            try:
                ready = await asyncio.wait_for(process.stdout.readline(), self._start_timeout)
            except TimeoutError:
                raise ClipperError(
                    f"query worker {worker_id} did not serve within {self._start_timeout:g}s"
                ) from None
            if not ready:
                code = await process.wait()
                raise ClipperError(f"query worker {worker_id} exited at start (status {code})")
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        log_event(
            log,
            "query_worker_started",
            f"query worker {worker_id} serves (pid {process.pid})",
            worker=worker_id,
            pid=process.pid,
        )
        return _Worker(worker_id, process, int(json.loads(ready)["direct_port"]), time.monotonic())

    async def _supervise(self, worker_id: int) -> None:
        """Restart worker ``worker_id`` whenever it exits, until stopping."""
        delay = RESTART_BACKOFF[0]
        while True:
            worker = self._workers[worker_id]
            code = await worker.process.wait()
            if self._stopping:
                return
            ran = time.monotonic() - worker.started_at
            delay = RESTART_BACKOFF[0] if ran >= STABLE_AFTER else delay
            log_event(
                log,
                "query_worker_exited",
                f"query worker {worker_id} (pid {worker.process.pid}) exited with status"
                f" {code}; restarting it in {delay:g}s",
                level=logging.WARNING,
                worker=worker_id,
                pid=worker.process.pid,
                status=code,
            )
            while True:
                await asyncio.sleep(delay)
                delay = min(2 * delay, RESTART_BACKOFF[1])
                try:
                    fresh = await self._spawn(worker_id)
                except Exception as exc:  # any failure: try again later, never give up
                    log.warning("restarting query worker %d failed: %s", worker_id, exc)
                    continue
                fresh.restarts = worker.restarts + 1
                self._workers[worker_id] = fresh
                break

    async def stop(self, grace: float) -> None:
        """Stop every worker: SIGTERM (they drain for their shutdown grace),
        then SIGKILL for those still running ``grace`` + 10 seconds later."""
        self._stopping = True
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        processes = [w.process for w in self._workers.values()]
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        waits = asyncio.gather(*(p.wait() for p in processes))
        try:
            await asyncio.wait_for(waits, grace + 10.0)
        except TimeoutError:
            for process in processes:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await asyncio.gather(*(p.wait() for p in processes))
        for process in processes:
            if process.stdin is not None:
                process.stdin.close()
