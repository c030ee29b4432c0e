"""The few Kubernetes API calls the manager makes, on the official client.

Every call blocks (the official client is synchronous): the manager runs them in a
worker thread.  Objects go in and come out as plain dicts (the JSON the API
server speaks, read with ``_preload_content=False``), so that nothing depends on
the client's generated model classes, which changed between releases.
Writes are server-side applies: one call creates or updates an object, and the
fields the manager owns are its own (``field_manager``).

Needs the ``kubernetes`` extra (``pip install 'clipper_core[kubernetes]'``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["KubeApi", "NotFoundError"]

_APPLY = "application/apply-patch+yaml"
# kind -> (API group attribute, method suffix)
_KINDS = {
    "StatefulSet": ("apps", "namespaced_stateful_set"),
    "Deployment": ("apps", "namespaced_deployment"),
    "Service": ("core", "namespaced_service"),
    "Secret": ("core", "namespaced_secret"),
    "ServiceAccount": ("core", "namespaced_service_account"),
    "Pod": ("core", "namespaced_pod"),
    "Role": ("rbac", "namespaced_role"),
    "RoleBinding": ("rbac", "namespaced_role_binding"),
}


class NotFoundError(LookupError):
    """The object does not exist (HTTP 404)."""


class KubeApi:
    """Blocking calls to one cluster.

    Args:
        api_client: A ``kubernetes.client.ApiClient`` (its configuration says
            which cluster and how to authenticate).
        field_manager: The field manager of every apply.
        request_timeout: Seconds a call other than a watch may take.
    """

    def __init__(self, api_client: Any, field_manager: str, request_timeout: float = 30.0) -> None:
        from kubernetes import client

        self._client = api_client
        self.field_manager = field_manager
        self._timeout = request_timeout
        self._groups: dict[str, Any] = {
            "apps": client.AppsV1Api(api_client),
            "core": client.CoreV1Api(api_client),
            "rbac": client.RbacAuthorizationV1Api(api_client),
        }

    @classmethod
    def from_environment(
        cls, field_manager: str, *, kubeconfig: str | None = None, context: str | None = None
    ) -> KubeApi:
        """The cluster this process runs in (its service account), else the one of
        ``kubeconfig`` (default ``$KUBECONFIG``, then ``~/.kube/config``)."""
        from kubernetes import client, config

        if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            return cls(client.ApiClient(), field_manager)
        configuration = client.Configuration()
        config.load_kube_config(
            # Read now: the client's own default is $KUBECONFIG as of its import.
            config_file=kubeconfig or os.environ.get("KUBECONFIG"),
            context=context,
            client_configuration=configuration,
        )
        return cls(client.ApiClient(configuration), field_manager)

    def close(self) -> None:
        """Release the connection pool."""
        self._client.close()

    def _method(self, verb: str, kind: str) -> Callable[..., Any]:
        try:
            group, suffix = _KINDS[kind]
        except KeyError:
            raise ValueError(f"the manager does not handle kind {kind!r}") from None
        method: Callable[..., Any] = getattr(self._groups[group], f"{verb}_{suffix}")
        return method

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            response = method(
                *args, _preload_content=False, _request_timeout=self._timeout, **kwargs
            )
        except ApiException as exc:
            if exc.status == 404:
                raise NotFoundError(str(exc.reason)) from None
            raise
        data: dict[str, Any] = json.loads(response.data or b"{}")
        return data

    def apply(self, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Create or update ``obj`` (server-side apply, conflicts forced); the
        object as stored (as it would be, with ``dry_run``: the API server checks
        it in full and stores nothing)."""
        meta = obj["metadata"]
        return self._call(
            self._method("patch", obj["kind"]),
            meta["name"],
            meta["namespace"],
            obj,
            field_manager=self.field_manager,
            force=True,
            _content_type=_APPLY,
            **({"dry_run": "All"} if dry_run else {}),
        )

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None if there is none."""
        try:
            return self._call(self._method("read", kind), name, namespace)
        except NotFoundError:
            return None

    def delete(
        self, kind: str, namespace: str, name: str, grace_seconds: int | None = None
    ) -> bool:
        """Delete an object (its dependents in the background); False if there
        was none."""
        from kubernetes import client

        body = client.V1DeleteOptions(
            propagation_policy="Background", grace_period_seconds=grace_seconds
        )
        try:
            self._call(self._method("delete", kind), name, namespace, body=body)
        except NotFoundError:
            return False
        return True

    def list_pods(self, namespace: str, selector: str) -> tuple[list[dict[str, Any]], str]:
        """The pods matching ``selector`` and the list's resource version."""
        listing = self._call(
            self._groups["core"].list_namespaced_pod, namespace, label_selector=selector
        )
        return list(listing.get("items") or []), str(listing["metadata"]["resourceVersion"])

    def watch_pods(
        self, namespace: str, selector: str, resource_version: str, timeout_seconds: int
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(type, pod)`` from ``resource_version`` on, for at most
        ``timeout_seconds``.  Types: ``ADDED``, ``MODIFIED``, ``DELETED``,
        ``BOOKMARK`` and ``ERROR`` (its object a Status; code 410: the version is
        too old, list again)."""
        # The stream is read here rather than through kubernetes.watch.Watch, which
        # turns every event into the client's model classes (costly, and strict
        # about fields that changed between releases).
        from kubernetes.watch.watch import iter_resp_lines

        response = self._groups["core"].list_namespaced_pod(
            namespace,
            label_selector=selector,
            resource_version=resource_version,
            watch=True,
            timeout_seconds=timeout_seconds,
            allow_watch_bookmarks=True,
            _preload_content=False,
            _request_timeout=timeout_seconds + 10,
        )
        try:
            for line in iter_resp_lines(response):
                if line.strip():
                    event = json.loads(line)
                    yield str(event["type"]), dict(event["object"])
        finally:
            response.release_conn()
