"""The manager's own checks of a manifest, before it reaches an API server.

The Kubernetes JSON schemas (what ``kubernetes-validate`` checks offline) describe
types and required fields only; an API server also refuses, and these checks
catch first (each was seen refused by a real kube-apiserver while the schema
accepted it): a container without an image; a workload selector that does not
match its pod template's labels; a name that is not a DNS-1123 label; a bad
quantity (``cpu: "1.5 cores"``); a port outside 1-65535; negative replicas.
Labels and annotations keys and values are checked as the API server does too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from clipper_core.errors import BadInput

__all__ = ["check_manifest", "manifest_problems"]

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# Service names are DNS-1035 labels: they start with a letter.
_DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
# An IANA service name: what a named port may be called.
_PORT_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
# resource.Quantity: a signed decimal, then a binary suffix, a decimal suffix or
# a decimal exponent ("100m", "1.5", "512Mi", "1e3").
_QUANTITY = re.compile(
    r"[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?"
)
_WORKLOADS = {"Deployment", "StatefulSet", "ReplicaSet", "DaemonSet"}
_MAX_NAME = {"StatefulSet": 52}


def check_manifest(obj: dict[str, Any]) -> None:
    """Raise unless the API server would take ``obj`` as far as these checks see.

    Raises:
        BadInput: Every problem found, one per line.
    """
    problems = list(manifest_problems(obj))
    if problems:
        what = f"{obj.get('kind', '?')} {obj.get('metadata', {}).get('name', '?')!r}"
        raise BadInput(f"invalid Kubernetes manifest {what}:\n" + "\n".join(problems))


def manifest_problems(obj: dict[str, Any]) -> Iterator[str]:
    """The problems of ``obj``, as ``"path: what is wrong"`` lines."""
    kind = str(obj.get("kind", ""))
    meta = obj.get("metadata") or {}
    yield from _name_problems(
        "metadata.name", meta.get("name"), _DNS_1035_LABEL if kind == "Service" else _DNS_LABEL
    )
    limit = _MAX_NAME.get(kind)
    if limit is not None and len(str(meta.get("name", ""))) > limit:
        yield f"metadata.name: a {kind} name may have at most {limit} characters"
    if meta.get("namespace") is not None:
        yield from _name_problems("metadata.namespace", meta["namespace"], _DNS_LABEL)
    yield from _meta_problems("metadata", meta)
    spec = obj.get("spec") or {}
    if kind in _WORKLOADS:
        yield from _workload_problems(spec)
    elif kind == "Pod":
        yield from _pod_problems("spec", spec)
    elif kind == "Service":
        for i, port in enumerate(spec.get("ports") or []):
            yield from _port_problems(f"spec.ports[{i}].port", port.get("port"))
            if isinstance(port.get("targetPort"), int):
                yield from _port_problems(f"spec.ports[{i}].targetPort", port["targetPort"])
            if port.get("name") is not None:
                yield from _name_problems(f"spec.ports[{i}].name", port["name"], _DNS_LABEL)
        for key, value in (spec.get("selector") or {}).items():
            yield from _label_problems("spec.selector", key, value)


def _name_problems(path: str, name: Any, pattern: re.Pattern[str]) -> Iterator[str]:
    if not isinstance(name, str) or not name:
        yield f"{path}: a name is required"
    elif len(name) > 63 or pattern.fullmatch(name) is None:
        yield (
            f"{path}: {name!r} is not a DNS-1123 label (at most 63 lowercase letters,"
            " digits and '-', starting"
            + (" with a letter" if pattern is _DNS_1035_LABEL else " and ending alphanumeric")
            + ")"
        )


def _key_problems(path: str, key: Any) -> Iterator[str]:
    prefix, _, name = str(key).rpartition("/")
    if not isinstance(key, str) or len(name) > 63 or _QUALIFIED_NAME.fullmatch(name) is None:
        yield f"{path}: key {key!r} is not a qualified name"
    elif prefix and (len(prefix) > 253 or _DNS_SUBDOMAIN.fullmatch(prefix) is None):
        yield f"{path}: the prefix of key {key!r} is not a DNS-1123 subdomain"


def _label_problems(path: str, key: Any, value: Any) -> Iterator[str]:
    yield from _key_problems(path, key)
    if not isinstance(value, str) or len(value) > 63 or _LABEL_VALUE.fullmatch(value) is None:
        yield f"{path}: value {value!r} of {key!r} is not a valid label value"


def _meta_problems(path: str, meta: dict[str, Any]) -> Iterator[str]:
    for key, value in (meta.get("labels") or {}).items():
        yield from _label_problems(f"{path}.labels", key, value)
    for key, value in (meta.get("annotations") or {}).items():
        yield from _key_problems(f"{path}.annotations", key)
        if not isinstance(value, str):
            yield f"{path}.annotations: value of {key!r} must be a string"


def _workload_problems(spec: dict[str, Any]) -> Iterator[str]:
    replicas = spec.get("replicas")
    if replicas is not None and (not isinstance(replicas, int) or replicas < 0):
        yield f"spec.replicas: must be an integer >= 0, got {replicas!r}"
    template = spec.get("template") or {}
    template_meta = template.get("metadata") or {}
    yield from _meta_problems("spec.template.metadata", template_meta)
    labels = template_meta.get("labels") or {}
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    if not selector and not (spec.get("selector") or {}).get("matchExpressions"):
        yield "spec.selector: a workload needs a non-empty selector"
    for key, value in selector.items():
        yield from _label_problems("spec.selector.matchLabels", key, value)
        if labels.get(key) != value:
            yield (
                f"spec.selector.matchLabels: {key}={value} does not match the pod"
                f" template's labels ({key}={labels.get(key)!r})"
            )
    yield from _pod_problems("spec.template.spec", template.get("spec") or {})


def _pod_problems(path: str, pod: dict[str, Any]) -> Iterator[str]:
    containers = pod.get("containers") or []
    if not containers:
        yield f"{path}.containers: a pod needs at least one container"
    for group in ("initContainers", "containers"):
        for i, container in enumerate(pod.get(group) or []):
            yield from _container_problems(f"{path}.{group}[{i}]", container)


def _container_problems(path: str, container: dict[str, Any]) -> Iterator[str]:
    yield from _name_problems(f"{path}.name", container.get("name"), _DNS_LABEL)
    image = container.get("image")
    if not isinstance(image, str) or not image.strip():
        yield f"{path}.image: a container needs an image"
    for i, port in enumerate(container.get("ports") or []):
        yield from _port_problems(f"{path}.ports[{i}].containerPort", port.get("containerPort"))
        if port.get("hostPort") is not None:
            yield from _port_problems(f"{path}.ports[{i}].hostPort", port["hostPort"])
        name = port.get("name")
        if name is not None and (
            not isinstance(name, str)
            or len(name) > 15
            or _PORT_NAME.fullmatch(name) is None
            or "--" in name
            or not any(c.isalpha() for c in name)
        ):
            yield f"{path}.ports[{i}].name: {name!r} is not an IANA service name"
    for probe_kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(probe_kind) or {}
        for handler in ("grpc", "tcpSocket", "httpGet"):
            port = (probe.get(handler) or {}).get("port")
            if isinstance(port, int) or (handler == "grpc" and handler in probe):
                yield from _port_problems(f"{path}.{probe_kind}.{handler}.port", port)
    resources = container.get("resources") or {}
    for section in ("requests", "limits"):
        for resource, quantity in (resources.get(section) or {}).items():
            if not isinstance(quantity, str | int) or isinstance(quantity, bool):
                yield f"{path}.resources.{section}.{resource}: {quantity!r} is not a quantity"
            elif _QUANTITY.fullmatch(str(quantity)) is None:
                yield f"{path}.resources.{section}.{resource}: {quantity!r} is not a quantity"


def _port_problems(path: str, port: Any) -> Iterator[str]:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        yield f"{path}: {port!r} is not a port number (1-65535)"
