"""The Kubernetes container manager: each model version is a StatefulSet.

:class:`KubernetesContainerManager` implements
:class:`~clipper_core.managers.base.ContainerManager` on a cluster through the
official ``kubernetes`` client (the ``kubernetes`` extra).  ``scale`` applies the
version's objects (:mod:`~.k8s_manifests`, checked by :mod:`~.kubernetes_checks`
first) with ``replicas = n``; one watch of the installation's model pods feeds a
:class:`~.kubernetes_pods.PodTracker`, which gives :meth:`list`, :meth:`wait_ready`
and the events.  Replica ``i`` is the StatefulSet's pod ``<name>-<i>``, serving at
its pod IP; :meth:`restart` deletes that pod and the StatefulSet makes it again.
The kubelet restarts crashed containers (and probes them over gRPC health), so
this manager only observes.  :meth:`close` stops the watch and leaves the
cluster's objects alone: the replicas outlive the frontend, and a frontend that
starts again finds them.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from clipper_core.config import ServerConfig
from clipper_core.errors import BadInput, ReplicaUnavailable
from clipper_core.managers.base import ContainerManager, ReplicaEvent, ReplicaStatus
from clipper_core.managers.k8s_manifests import (
    KubernetesSettings,
    object_name,
    pod_selector,
    render_model_objects,
)
from clipper_core.managers.kubernetes_api import KubeApi
from clipper_core.managers.kubernetes_checks import check_manifest
from clipper_core.managers.kubernetes_pods import PodTracker, TrackedReplica
from clipper_core.store.records import ModelRecord

__all__ = ["KubernetesContainerManager"]

logger = logging.getLogger("clipper_core.managers.kubernetes")

# Seconds one watch request lasts before it is renewed (the API server's bound).
_WATCH_SECONDS = 240
# Delay before listing again after the watch failed.
_RELIST_DELAY = (0.5, 10.0)


class KubernetesContainerManager:
    """Runs the replicas of model versions as pods of one StatefulSet each.

    Args:
        settings: Namespace, image, bundle URL and token Secret (see
            :class:`~.k8s_manifests.KubernetesSettings`).
        api: The cluster (default: in-cluster, else ``$KUBECONFIG``).
        start_timeout: The default ``timeout`` of :meth:`wait_ready`, in seconds.
        stop_timeout: How long a scale down waits for its pods to go.
        token_for: The bundle token of a model version; when given, each version
            gets a Secret of its own (else every pod mounts
            ``settings.bundle_secret``).
        max_start_failures: Consecutive exits before ready that mark a replica failed.
    """

    def __init__(
        self,
        settings: KubernetesSettings | None = None,
        *,
        api: KubeApi | None = None,
        start_timeout: float = 300.0,
        stop_timeout: float = 60.0,
        token_for: Callable[[ModelRecord], str] | None = None,
        max_start_failures: int = 5,
    ) -> None:
        if start_timeout <= 0 or stop_timeout <= 0:
            raise BadInput("start_timeout and stop_timeout must be > 0")
        self.settings = settings or KubernetesSettings()
        self.api = api or KubeApi.from_environment(self.settings.field_manager)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._token_for = token_for
        self.tracker = PodTracker(self.settings.container_port, max_start_failures)
        self._subscribers: list[Callable[[ReplicaEvent], None]] = []
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._synced: asyncio.Event | None = None
        self._closing = threading.Event()
        self._watch_error = ""

    @classmethod
    def from_config(
        cls,
        cfg: ServerConfig,
        *,
        api: KubeApi | None = None,
        token_for: Callable[[ModelRecord], str] | None = None,
    ) -> KubernetesContainerManager:
        """The manager a server with ``container_manager = "kubernetes"`` uses
        (on ``api``; default: in-cluster, else ``$KUBECONFIG``); ``token_for``
        gives each version the replica token its pods fetch their bundle with."""
        default = KubernetesSettings()
        settings = KubernetesSettings(
            namespace=cfg.kubernetes_namespace,
            image=cfg.kubernetes_image or default.image,
            bundle_url=cfg.kubernetes_bundle_url or default.bundle_url,
            bundle_secret=cfg.kubernetes_bundle_secret or default.bundle_secret,
            part_of=cfg.kubernetes_part_of,
            container_port=cfg.kubernetes_container_port,
            startup_seconds=cfg.kubernetes_startup_seconds,
        )
        return cls(settings, api=api, start_timeout=cfg.replica_start_timeout, token_for=token_for)

    async def __aenter__(self) -> KubernetesContainerManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- ContainerManager ---------------------------------------------------------

    async def scale(self, model: ModelRecord, n: int) -> None:
        """Apply the version's Secret, Service and StatefulSet with ``replicas = n``
        (``n = 0`` deletes them).  Returns once the objects are stored and, on a
        scale down, once the pods beyond ``n`` are gone (``stop_timeout``).  The
        pods of failed replicas below ``n`` are deleted, so that the StatefulSet
        makes them anew.

        Raises:
            BadInput: ``n`` < 0, the record describes no container, or a rendered
                manifest fails the manager's checks.
            ReplicaUnavailable: The API server refused a write.
        """
        if n < 0:
            raise BadInput(f"replica count must be >= 0, got {n}")
        if model.registered_by_hand:
            return
        objects: builtins.list[dict[str, Any]] = []
        if n > 0:
            token = self._token_for(model) if self._token_for is not None else None
            objects = render_model_objects(model, n, self.settings, token)
            for obj in objects:
                check_manifest(obj)
        await self._ensure_watch()
        key = (model.name, model.version)
        async with self._locks.setdefault(key, asyncio.Lock()):
            # want() puts failed replicas back to starting, so they are taken from
            # its answer: looking for state "failed" afterwards finds none.
            retried = self.tracker.want(model.name, model.version, n)
            try:
                if n == 0:
                    await self._delete_version(model)
                for obj in objects:
                    await asyncio.to_thread(self.api.apply, obj)
                # After the apply, so that the StatefulSet makes the new pods from
                # the template just written.
                for replica in retried:
                    await self._replace_pod(replica)
            except Exception as exc:
                if isinstance(exc, BadInput):
                    raise
                raise ReplicaUnavailable(f"cannot scale {model.key} to {n}: {exc}") from exc
            await self._wait_stopped(model.name, model.version, n)

    # The timeout is part of the contract (and of the error message), so it is a
    # parameter rather than left to the caller's asyncio.timeout().
    async def wait_ready(
        self,
        name: str,
        version: str,
        replica_id: str,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> str:
        """Wait until replica ``replica_id``'s pod is Ready (its gRPC health serves);
        ``<pod IP>:<port>``.

        Raises:
            ReplicaUnavailable: Its container exited first (exit code and last log
                lines in the message), it failed, it is not wanted, or the
                timeout (``start_timeout`` by default) passed.
        """
        await self._ensure_watch()
        budget = self.start_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        who = f"replica {name}:{version}:{replica_id}"
        exits: int | None = None
        while True:
            replica = self.tracker.get(name, version, replica_id)
            if replica is None:
                raise ReplicaUnavailable(f"{who} is not running")
            if replica.state == "running" and replica.address is not None:
                return replica.address
            if replica.state in ("failed", "stopped"):
                raise ReplicaUnavailable(f"{who} is {replica.state}: {replica.detail}")
            if exits is None:
                exits = replica.exits
            elif replica.exits != exits:
                raise ReplicaUnavailable(f"{who} exited before it was ready: {replica.detail}")
            changed = replica.changed
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                raise ReplicaUnavailable(
                    f"{who} did not become ready within {budget:g} s (pod {replica.pod_name},"
                    f" state {replica.state}{'; ' + replica.detail if replica.detail else ''})"
                ) from None

    async def restart(self, name: str, version: str, replica_id: str) -> None:
        """Delete the replica's pod; the StatefulSet makes it again (``exited``,
        ``restarting``, ``started``, ``ready``).  An unknown replica, or one whose
        pod does not exist yet, is left alone."""
        replica = self.tracker.get(name, version, replica_id)
        if replica is None or replica.pod_name is None or replica.pod_uid is None:
            return
        logger.warning("restarting replica %s:%s:%s: deleting pod %s", name, version,
                       replica_id, replica.pod_name)  # fmt: skip
        await self._delete("Pod", replica.pod_name)
        # Known now, before the watch reports it: a wait_ready from here on waits
        # for the new pod.
        if self.tracker.get(name, version, replica_id) is replica and not replica.deleting:
            self._emit(self.tracker.pod_going(replica))

    def list(self, name: str | None = None, version: str | None = None) -> list[ReplicaStatus]:
        """The replicas of the watched pods and those wanted but not made yet."""
        return [r.status() for r in self.tracker.replicas(name, version)]

    def subscribe(self, callback: Callable[[ReplicaEvent], None]) -> None:
        """Call ``callback`` with every :class:`ReplicaEvent` from now on (on the
        loop, synchronously; it must not block).  Errors it raises are logged."""
        self._subscribers.append(callback)

    async def close(self) -> None:
        """Stop watching; the cluster's objects stay.  Safe to call more than once."""
        self._closing.set()
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self.api.close)

    # -- helpers ------------------------------------------------------------------

    async def _replace_pod(self, replica: TrackedReplica) -> None:
        """Delete a failed replica's pod: the kubelet would keep one stuck in
        ``ImagePullBackOff`` or ``CrashLoopBackOff`` as it is, while the StatefulSet
        makes a deleted one anew."""
        if replica.pod_name is None or replica.pod_uid is None:
            return
        logger.warning("replacing failed replica %s:%s:%s: deleting pod %s", replica.model,
                       replica.version, replica.replica_id, replica.pod_name)  # fmt: skip
        await self._delete("Pod", replica.pod_name)
        # As in restart(): a wait_ready from here on waits for the new pod, not
        # for the old one's deletion to come through the watch.
        tracked = self.tracker.get(replica.model, replica.version, replica.replica_id)
        if tracked is replica and not replica.deleting:
            self._emit(self.tracker.pod_going(replica))

    async def _delete(self, kind: str, name: str | None) -> None:
        if name is not None:
            ns = self.settings.namespace
            await asyncio.to_thread(self.api.delete, kind, ns, name)

    async def _delete_version(self, model: ModelRecord) -> None:
        name = object_name(model.name, model.version, self.settings.part_of)
        await self._delete("StatefulSet", name)
        await self._delete("Service", name)
        if self._token_for is not None:
            await self._delete("Secret", f"{name}-token")

    async def _wait_stopped(self, name: str, version: str, n: int) -> None:
        """Wait until the replicas beyond ``n`` are gone; those still there after
        ``stop_timeout`` (a pod stuck terminating) are reported stopped anyway."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_timeout
        while True:
            excess = [r for r in self.tracker.replicas(name, version) if int(r.replica_id) >= n]
            if not excess:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                for replica in excess:
                    logger.warning("pod %s still terminating after %g s; reported stopped",
                                   replica.pod_name, self.stop_timeout)  # fmt: skip
                    self._emit([self.tracker.forget(replica)])
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(excess[0].changed.wait(), remaining)

    def _emit(self, events: Iterable[ReplicaEvent]) -> None:
        for event in events:
            for callback in list(self._subscribers):
                try:
                    callback(event)
                except Exception:
                    logger.exception("a subscriber failed on a %r event", event.kind)

    async def _ensure_watch(self) -> None:
        """Start the pod watch on first use and wait for its first list."""
        if self._watch_task is None:
            if self._closing.is_set():
                raise ReplicaUnavailable("the Kubernetes manager is closed")
            self._synced = asyncio.Event()
            self._watch_task = asyncio.create_task(self._watch(), name="kubernetes pod watch")
        assert self._synced is not None
        try:
            await asyncio.wait_for(self._synced.wait(), self.start_timeout)
        except TimeoutError:
            raise ReplicaUnavailable(
                f"cannot list the model pods in namespace {self.settings.namespace!r}"
                f" within {self.start_timeout:g} s: {self._watch_error or 'no answer'}"
            ) from None

    async def _watch(self) -> None:
        """List the model pods, then follow them; list again whenever the watch
        ends or fails (an expired version, a dropped connection)."""
        loop = asyncio.get_running_loop()
        ns, selector = self.settings.namespace, pod_selector(self.settings)
        delay = _RELIST_DELAY[0]
        while True:
            try:
                pods, version = await asyncio.to_thread(self.api.list_pods, ns, selector)
                self._emit(self.tracker.resync(pods))
                assert self._synced is not None
                self._synced.set()
                done = loop.create_future()
                thread = threading.Thread(
                    target=self._follow, args=(loop, done, ns, selector, version),
                    name="kubernetes pod watch", daemon=True,
                )  # fmt: skip
                thread.start()
                await done
                delay = _RELIST_DELAY[0]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._watch_error = f"{type(exc).__name__}: {exc}"
                logger.warning("watching the model pods failed (%s); listing again in %g s",
                               exc, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(2 * delay, _RELIST_DELAY[1])

    def _follow(
        self,
        loop: asyncio.AbstractEventLoop,
        done: asyncio.Future[None],
        namespace: str,
        selector: str,
        version: str,
    ) -> None:
        """One watch request, on a thread: each pod event goes to the loop."""
        error: BaseException | None = None
        try:
            for kind, pod in self.api.watch_pods(namespace, selector, version, _WATCH_SECONDS):
                if self._closing.is_set():
                    return
                if kind == "ERROR":
                    raise RuntimeError(f"watch error: {pod.get('message', pod)}")
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    loop.call_soon_threadsafe(self._on_pod, kind, pod)
        except BaseException as exc:
            error = exc
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(_settle, done, error)

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        self._emit(self.tracker.apply(kind, pod))


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


if TYPE_CHECKING:  # mypy checks that the class keeps the interface
    _implements: type[ContainerManager] = KubernetesContainerManager
