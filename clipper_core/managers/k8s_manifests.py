"""The Kubernetes objects of a model version, rendered from its record (no I/O).

A model version runs as one StatefulSet (``replicas`` = the replica count), with
a headless Service that governs it and, when the version has its own bundle
token, a Secret holding it.  Every function returns plain dicts as the API
server takes them (camelCase keys), which :func:`~.kubernetes_checks.check_manifest`
checks and the tests validate against the Kubernetes schemas.

Why a StatefulSet rather than a Deployment: the manager contract names replicas
``"0"``, ``"1"``, ... keeps the id across a restart and stops the highest ids
first on a scale down.  A StatefulSet does exactly that (pod ``<name>-<i>`` is
replica ``i``, re-created under the same name when deleted, removed highest
ordinal first), whereas a Deployment's pods get random names and a scale down
picks its victims by readiness and age, so ids would have to be re-dealt and
would change under the data plane.  ``podManagementPolicy: Parallel`` starts and
stops the pods all at once, as a Deployment would, instead of one by one.

Names: Kubernetes wants DNS-1123 labels (lowercase letters, digits and ``-``, at
most 63 characters), a model name may have uppercase letters, ``_`` and ``.`` and
128 characters.  :func:`object_name` maps (model, version) to
``clipper-<slug>-<hash>``: readable, valid, at most 52 characters (a StatefulSet's
pods carry a ``controller-revision-hash`` label of its name plus 11 characters),
and distinct for distinct versions (the hash is of the exact name and version).
The exact name and version travel as annotations.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from clipper_core.errors import BadInput
from clipper_core.managers.replica import THREAD_POOL_VARS
from clipper_core.store.records import ModelRecord

__all__ = [
    "ANNOTATION_MODEL",
    "ANNOTATION_VERSION",
    "LABEL_INSTANCE",
    "MODEL_APP",
    "TOKEN_DIR",
    "KubernetesSettings",
    "bundle_url",
    "container_args",
    "model_labels",
    "object_name",
    "pod_selector",
    "render_model_objects",
    "render_model_service",
    "render_model_statefulset",
    "render_token_secret",
]

LABEL_APP = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
#: ``app.kubernetes.io/name`` of every model pod.
MODEL_APP = "clipper-model"
MANAGED_BY = "clipper-core"
ANNOTATION_MODEL = "clipper-core.io/model"
ANNOTATION_VERSION = "clipper-core.io/version"
#: The ordinal label a StatefulSet puts on its pods (Kubernetes >= 1.28).
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
#: Where the bundle token is mounted in a model pod (file ``token``).
TOKEN_DIR = "/var/run/clipper/bundle"
#: The longest workload name: its pods' ``controller-revision-hash`` label is the
#: name, ``-`` and a 10-character hash, and a label value has at most 63.
WORKLOAD_NAME_MAX = 52

_HASH_CHARS = 10


@dataclass(frozen=True)
class KubernetesSettings:
    """Where and how model versions run in a cluster.

    Attributes:
        namespace: The namespace of every object the manager creates.
        image: The generic model-container image (``model_containers/Dockerfile``);
            a record's ``container["image"]`` overrides it.
        image_pull_policy: ``IfNotPresent``, ``Always`` or ``Never``.
        container_port: The port the container's gRPC server listens on.
        bundle_url: Where a replica fetches its model bundle, with ``{model}`` and
            ``{version}`` (URL-quoted): the frontend's management API, reached
            through its Service.
        bundle_secret: The Secret (key ``token``) whose token authenticates the
            fetch, unless the manager is given a token per model version.
        part_of: The ``app.kubernetes.io/part-of`` label: one installation's
            objects; two installations in one namespace need two values.
        field_manager: The field manager of the manager's server-side applies.
        startup_seconds: How long a replica may take to load its model before
            the kubelet gives up on it (the startup probe's budget).
        run_as_user: The uid the container runs as (the image's ``clipper`` user).
    """

    namespace: str = "default"
    image: str = "clipper-core/model-container:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    container_port: int = 7000
    bundle_url: str = "http://clipper-frontend:1338/admin/bundle/{model}/{version}"
    bundle_secret: str = "clipper-bundle-token"
    part_of: str = "clipper"
    field_manager: str = "clipper-core"
    startup_seconds: int = 300
    run_as_user: int = 10001


def object_name(model: str, version: str, part_of: str = "clipper") -> str:
    """The DNS-1123 name of a model version's objects (see the module docstring).
    Another installation (``part_of``) in the namespace gets other names: objects
    named alike would be applied over each other's."""
    key = f"{model}:{version}" if part_of == "clipper" else f"{part_of}/{model}:{version}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:_HASH_CHARS]
    slug = re.sub(r"[^a-z0-9]+", "-", f"{model}-v{version}".lower()).strip("-")
    head = f"clipper-{slug}"[: WORKLOAD_NAME_MAX - _HASH_CHARS - 1].rstrip("-")
    return f"{head}-{digest}"


def pod_selector(settings: KubernetesSettings) -> str:
    """The label selector of every model pod of this installation."""
    return f"{LABEL_APP}={MODEL_APP},{LABEL_PART_OF}={settings.part_of}"


def model_labels(record: ModelRecord, settings: KubernetesSettings) -> dict[str, str]:
    """The labels of a model version's objects and pods (its selector's too)."""
    return {
        LABEL_APP: MODEL_APP,
        LABEL_INSTANCE: object_name(record.name, record.version, settings.part_of),
        LABEL_PART_OF: settings.part_of,
        LABEL_MANAGED_BY: MANAGED_BY,
    }


def _selector_labels(record: ModelRecord, settings: KubernetesSettings) -> dict[str, str]:
    labels = model_labels(record, settings)
    return {key: labels[key] for key in (LABEL_APP, LABEL_INSTANCE, LABEL_PART_OF)}


def _metadata(record: ModelRecord, settings: KubernetesSettings, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": settings.namespace,
        "labels": model_labels(record, settings),
        "annotations": {ANNOTATION_MODEL: record.name, ANNOTATION_VERSION: record.version},
    }


def bundle_url(record: ModelRecord, settings: KubernetesSettings) -> str:
    """The URL a replica of ``record`` fetches its bundle from: the management
    API's bundle route, pinned to the deployed payload's digest when the record has
    one (the container refuses other bytes)."""
    url = settings.bundle_url.format(
        model=quote(record.name, safe=""), version=quote(record.version, safe="")
    )
    digest = record.container.get("payload_sha256")
    if isinstance(digest, str) and digest:
        url += ("&" if "?" in url else "?") + f"sha256={digest}"
    return url


def container_args(record: ModelRecord, settings: KubernetesSettings) -> list[str]:
    """The arguments of ``python -m model_containers`` in a model pod.

    The container fetches its bundle (``--bundle-url`` with the token of
    ``--bundle-token-file``) into a folder of its own and loads it from there: a
    pickled closure as such, a model folder with ``--model-class`` or
    ``--adapter``.  The replica id and the advertised address come from the pod
    (``$(VAR)`` expands the container's env).

    Raises:
        BadInput: The record describes no container this manager can start.
    """
    port = settings.container_port
    args = [
        "--model-name", record.name,
        "--model-version", record.version,
        "--input-type", record.input_type,
        "--replica-id", "$(CLIPPER_REPLICA_ID)",
        "--host", "0.0.0.0",
        "--port", str(port),
        "--advertise-address", f"$(CLIPPER_POD_IP):{port}",
        "--local-socket", "off",
        "--bundle-url", bundle_url(record, settings),
        "--bundle-token-file", f"{TOKEN_DIR}/token",
    ]  # fmt: skip
    container = record.container
    kind = container.get("kind")
    if kind == "closure":
        pass  # the bundle is the pickled closure
    elif kind == "class":
        args += ["--model-class", str(container["class"])]
    elif container.get("adapter"):
        args += ["--adapter", str(container["adapter"])]
    else:
        raise BadInput(f"model {record.key} has no container to start (kind {kind!r})")
    if container.get("deploy_env"):
        args += ["--deploy-env", json.dumps(container["deploy_env"], separators=(",", ":"))]
    return args


def _resources(record: ModelRecord) -> dict[str, Any]:
    """Requests and limits from the record: one CPU per listed cpu, its memory limit;
    a GPU when its placement names one."""
    limits: dict[str, str] = {}
    if record.cpus:
        limits["cpu"] = str(len(set(record.cpus)))
    if record.memory_limit_mb is not None:
        limits["memory"] = f"{record.memory_limit_mb}Mi"
    placement = record.container.get("placement") or []
    if any(isinstance(p, dict) and p.get("gpu") is not None for p in placement):
        limits["nvidia.com/gpu"] = "1"
    if not limits:
        return {}
    # Requests = limits: the scheduler reserves what the replica may use.
    return {"requests": dict(limits), "limits": limits}


def _threads(record: ModelRecord) -> str:
    return str(len(set(record.cpus))) if record.cpus else "1"


def _grpc_probe(port: int, period: int, failures: int) -> dict[str, Any]:
    return {
        "grpc": {"port": port},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def render_model_statefulset(
    record: ModelRecord, replicas: int, settings: KubernetesSettings, *, token_secret: str
) -> dict[str, Any]:
    """The StatefulSet of ``record`` with ``replicas`` pods.

    Args:
        record: The model version.
        replicas: The replica count.
        settings: The cluster settings.
        token_secret: The Secret whose key ``token`` the pod mounts.
    """
    name = object_name(record.name, record.version, settings.part_of)
    port = settings.container_port
    template_meta = _metadata(record, settings, name)
    del template_meta["name"], template_meta["namespace"]
    env: list[dict[str, Any]] = [
        {"name": "CLIPPER_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {
            "name": "CLIPPER_REPLICA_ID",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{POD_INDEX_LABEL}']"}},
        },
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        *({"name": var, "value": _threads(record)} for var in THREAD_POOL_VARS),
    ]
    container: dict[str, Any] = {
        "name": "model",
        "image": str(record.container.get("image") or settings.image),
        "imagePullPolicy": settings.image_pull_policy,
        "args": container_args(record, settings),
        "env": env,
        "ports": [{"name": "grpc", "containerPort": port, "protocol": "TCP"}],
        "resources": _resources(record),
        # The kubelet asks the container's own grpc.health.v1 service: SERVING
        # once the model is loaded, NOT_SERVING while it loads and when it stops.
        "startupProbe": _grpc_probe(port, 2, max(1, math.ceil(settings.startup_seconds / 2))),
        "readinessProbe": _grpc_probe(port, 5, 1),
        "livenessProbe": _grpc_probe(port, 10, 3),
        # A container that dies gets its last log lines as its termination
        # message, which the manager reports as the replica's stderr tail.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "bundle-token", "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": "work", "mountPath": "/tmp"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(record, settings, name),
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": _selector_labels(record, settings)},
            "template": {
                "metadata": template_meta,
                "spec": {
                    # Model code needs no access to the Kubernetes API.
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": settings.run_as_user,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "terminationGracePeriodSeconds": 10,
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "bundle-token",
                            "secret": {
                                "secretName": token_secret,
                                "items": [{"key": "token", "path": "token"}],
                            },
                        },
                        {"name": "work", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def render_model_service(record: ModelRecord, settings: KubernetesSettings) -> dict[str, Any]:
    """The headless Service that governs the StatefulSet (stable pod DNS names)."""
    name = object_name(record.name, record.version, settings.part_of)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(record, settings, name),
        "spec": {
            "clusterIP": "None",
            # The frontend tracks readiness itself; DNS names exist from the start.
            "publishNotReadyAddresses": True,
            "selector": _selector_labels(record, settings),
            "ports": [
                {
                    "name": "grpc",
                    "port": settings.container_port,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                }
            ],
        },
    }


def render_token_secret(
    record: ModelRecord, settings: KubernetesSettings, token: str
) -> dict[str, Any]:
    """A Secret holding the bundle token of one model version."""
    name = f"{object_name(record.name, record.version, settings.part_of)}-token"
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(record, settings, name),
        "type": "Opaque",
        "stringData": {"token": token},
    }


def render_model_objects(
    record: ModelRecord, replicas: int, settings: KubernetesSettings, token: str | None = None
) -> list[dict[str, Any]]:
    """Everything a model version needs, in the order to apply it: its token
    Secret (when ``token`` is given; else ``settings.bundle_secret`` is used), its
    headless Service, its StatefulSet."""
    objects: list[dict[str, Any]] = []
    secret_name = settings.bundle_secret
    if token is not None:
        secret = render_token_secret(record, settings, token)
        secret_name = secret["metadata"]["name"]
        objects.append(secret)
    objects.append(render_model_service(record, settings))
    objects.append(render_model_statefulset(record, replicas, settings, token_secret=secret_name))
    return objects
