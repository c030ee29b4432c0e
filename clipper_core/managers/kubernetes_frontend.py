"""The manifests of a frontend (``clipper serve``) running in the cluster.

:func:`render_frontend_objects` gives what one frontend needs, to apply with
``kubectl apply -f`` (:func:`frontend_manifest_yaml`): a ServiceAccount with a
Role that lets its :class:`~.kubernetes.KubernetesContainerManager` manage model
StatefulSets, Services, Secrets and pods in its namespace; the Secrets with the
admin token and the bundle token; the frontend Deployment; and its Service (the
query, management and OIP gRPC ports), which is also how model pods reach the
bundle endpoint.  Several frontends sharing one state (``--state-url``) are one
Deployment with more replicas behind the same Service.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from clipper_core.managers.k8s_manifests import KubernetesSettings

__all__ = ["FrontendSpec", "frontend_manifest_yaml", "render_frontend_objects"]

_LABEL_APP = "app.kubernetes.io/name"
_LABEL_PART_OF = "app.kubernetes.io/part-of"


@dataclass(frozen=True)
class FrontendSpec:
    """One frontend installation.

    Attributes:
        name: Its Deployment, Service, ServiceAccount and Role name.
        image: An image with ``clipper_core[kubernetes]`` installed (and
            ``[redis]`` with ``state_url``).
        replicas: Frontend pods; more than one needs ``state_url``.
        state_url: The Redis URL the frontends share, or None (SQLite in the
            pod's ``emptyDir``: state is lost with the pod).
        query_port: Clipper's query REST port.
        management_port: The management API port (and the bundle endpoint).
        grpc_port: The Open Inference Protocol gRPC port.
        models: The model pods' settings (namespace, image, bundle URL, ...).
        extra_args: More ``clipper serve`` options.
    """

    name: str = "clipper-frontend"
    image: str = "clipper-core/frontend:0.1.0"
    replicas: int = 1
    state_url: str | None = None
    query_port: int = 1337
    management_port: int = 1338
    grpc_port: int = 8001
    models: KubernetesSettings = field(default_factory=KubernetesSettings)
    extra_args: tuple[str, ...] = ()


def _meta(spec: FrontendSpec, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": spec.models.namespace,
        "labels": {_LABEL_APP: spec.name, _LABEL_PART_OF: spec.models.part_of},
    }


def _serve_args(spec: FrontendSpec) -> list[str]:
    m = spec.models
    args = [
        "serve",
        "--host", "0.0.0.0",
        "--query-port", str(spec.query_port),
        "--management-port", str(spec.management_port),
        "--grpc-port", str(spec.grpc_port),
        "--state-dir", "/var/lib/clipper",
        # The Service's name, with which model pods and clients reach the frontend.
        "--allowed-host", spec.name,
        "--allowed-host", f"{spec.name}.{m.namespace}.svc",
        "--container-manager", "kubernetes",
        "--kubernetes-namespace", m.namespace,
        "--kubernetes-image", m.image,
        "--kubernetes-bundle-url", m.bundle_url,
        "--kubernetes-bundle-secret", m.bundle_secret,
        "--kubernetes-part-of", m.part_of,
        "--kubernetes-container-port", str(m.container_port),
        "--kubernetes-startup-seconds", str(m.startup_seconds),
    ]  # fmt: skip
    if spec.state_url:
        args += ["--state-url", spec.state_url]
    return args + list(spec.extra_args)


def _secret(spec: FrontendSpec, name: str, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(spec, name),
        "type": "Opaque",
        "stringData": {"token": token},
    }


def render_frontend_objects(
    spec: FrontendSpec, *, admin_token: str, bundle_token: str
) -> list[dict[str, Any]]:
    """Everything one frontend installation needs, in the order to apply it.

    Args:
        spec: The installation.
        admin_token: The management API's bearer token (Secret
            ``<name>-admin-token``, given to the frontend as ``CLIPPER_ADMIN_TOKEN``).
        bundle_token: The token model pods fetch their bundles with (Secret
            ``spec.models.bundle_secret``, mounted by every model pod).
    """
    labels = {_LABEL_APP: spec.name, _LABEL_PART_OF: spec.models.part_of}
    rules = [
        {
            "apiGroups": ["apps"],
            "resources": ["statefulsets"],
            "verbs": ["get", "list", "watch", "create", "patch", "delete"],
        },
        {
            "apiGroups": [""],
            "resources": ["services", "secrets"],
            "verbs": ["get", "create", "patch", "delete"],
        },
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"]},
    ]
    ports = [
        ("query", spec.query_port),
        ("management", spec.management_port),
        ("grpc", spec.grpc_port),
    ]
    container = {
        "name": "frontend",
        "image": spec.image,
        "args": _serve_args(spec),
        "env": [
            {
                "name": "CLIPPER_ADMIN_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": f"{spec.name}-admin-token", "key": "token"}},
            }
        ],
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in ports],
        "readinessProbe": {"tcpSocket": {"port": spec.query_port}, "periodSeconds": 5},
        "volumeMounts": [{"name": "state", "mountPath": "/var/lib/clipper"}],
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(spec, spec.name)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(spec, spec.name),
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(spec, spec.name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": spec.name},
            "subjects": [
                {"kind": "ServiceAccount", "name": spec.name, "namespace": spec.models.namespace}
            ],
        },
        _secret(spec, f"{spec.name}-admin-token", admin_token),
        _secret(spec, spec.models.bundle_secret, bundle_token),
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(spec, spec.name),
            "spec": {
                "replicas": spec.replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": spec.name,
                        "containers": [container],
                        "volumes": [{"name": "state", "emptyDir": {}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(spec, spec.name),
            "spec": {
                "selector": labels,
                "ports": [
                    {"name": name, "port": port, "targetPort": name, "protocol": "TCP"}
                    for name, port in ports
                ],
            },
        },
    ]


def frontend_manifest_yaml(objects: list[dict[str, Any]]) -> str:
    """The objects as one multi-document YAML stream (JSON is YAML) for ``kubectl
    apply -f -``."""
    return "".join(f"---\n{json.dumps(obj, indent=2)}\n" for obj in objects)
