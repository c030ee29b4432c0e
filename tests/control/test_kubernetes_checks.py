"""The manager's own checks of a manifest: each catches something that the
Kubernetes schemas (``kubernetes-validate``) let through and a real API server
refuses (REFERENCE.md, "Scale-out facts")."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from clipper_core.errors import BadInput
from clipper_core.managers.k8s_manifests import KubernetesSettings, render_model_objects
from clipper_core.managers.kubernetes_checks import check_manifest, manifest_problems
from clipper_core.store.records import ModelRecord

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="needs kubernetes-validate (the test extra)"
)

REC = ModelRecord(
    name="m",
    version="1",
    input_type="doubles",
    labels=[],
    container={"kind": "closure", "path": "/x/model.pkl"},
    cpus=[0],
    memory_limit_mb=128,
)
SERVICE, STATEFULSET = render_model_objects(REC, 2, KubernetesSettings())


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = obj["spec"]["template"]["spec"]["containers"][0]
    return container


def _no_image(obj: dict[str, Any]) -> None:
    del _container(obj)["image"]


def _empty_image(obj: dict[str, Any]) -> None:
    _container(obj)["image"] = " "


def _selector_mismatch(obj: dict[str, Any]) -> None:
    obj["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] = "another"


def _uppercase_name(obj: dict[str, Any]) -> None:
    obj["metadata"]["name"] = "My-Model"


def _underscore_name(obj: dict[str, Any]) -> None:
    obj["metadata"]["name"] = "my_model"


def _long_name(obj: dict[str, Any]) -> None:
    obj["metadata"]["name"] = "m" * 64


def _bad_cpu(obj: dict[str, Any]) -> None:
    _container(obj)["resources"]["limits"]["cpu"] = "1.5 cores"


def _bad_memory(obj: dict[str, Any]) -> None:
    _container(obj)["resources"]["requests"]["memory"] = "128MB"


def _port_zero(obj: dict[str, Any]) -> None:
    _container(obj)["ports"][0]["containerPort"] = 0


def _port_too_high(obj: dict[str, Any]) -> None:
    _container(obj)["ports"][0]["containerPort"] = 70000


def _probe_port(obj: dict[str, Any]) -> None:
    _container(obj)["readinessProbe"]["grpc"]["port"] = 65536


def _negative_replicas(obj: dict[str, Any]) -> None:
    obj["spec"]["replicas"] = -1


CASES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "no image": (_no_image, "needs an image"),
    "blank image": (_empty_image, "needs an image"),
    "selector mismatch": (_selector_mismatch, "does not match the pod template's labels"),
    "uppercase name": (_uppercase_name, "is not a DNS-1123 label"),
    "underscore name": (_underscore_name, "is not a DNS-1123 label"),
    "64-character name": (_long_name, "is not a DNS-1123 label"),
    "bad cpu quantity": (_bad_cpu, "'1.5 cores' is not a quantity"),
    "bad memory quantity": (_bad_memory, "'128MB' is not a quantity"),
    "port 0": (_port_zero, "0 is not a port number"),
    "port 70000": (_port_too_high, "70000 is not a port number"),
    "probe port 65536": (_probe_port, "65536 is not a port number"),
    "negative replicas": (_negative_replicas, "spec.replicas: must be an integer >= 0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_check_refuses_what_the_schema_lets_through(case: str) -> None:
    spoil, message = CASES[case]
    obj = copy.deepcopy(STATEFULSET)
    spoil(obj)
    # The schemas take it: this check is the only one before the API server.
    kubernetes_validate.validate(obj, "1.36.0", strict=True)
    with pytest.raises(BadInput, match="invalid Kubernetes manifest StatefulSet") as caught:
        check_manifest(obj)
    assert message in str(caught.value)


def test_the_rendered_manifests_have_no_problem() -> None:
    assert list(manifest_problems(SERVICE)) == []
    assert list(manifest_problems(STATEFULSET)) == []


@pytest.mark.parametrize("quantity", ["1", "100m", "0.5", "1.5", "512Mi", "2Gi", "1e3", "+1k"])
def test_valid_quantities_pass(quantity: str) -> None:
    obj = copy.deepcopy(STATEFULSET)
    _container(obj)["resources"]["limits"]["cpu"] = quantity
    check_manifest(obj)


def test_a_service_name_must_start_with_a_letter_and_its_ports_be_in_range() -> None:
    obj = copy.deepcopy(SERVICE)
    obj["metadata"]["name"] = "7-model"
    obj["spec"]["ports"][0]["port"] = 0
    kubernetes_validate.validate(obj, "1.36.0", strict=True)
    problems = "\n".join(manifest_problems(obj))
    assert "starting with a letter" in problems
    assert "spec.ports[0].port: 0 is not a port number" in problems


def test_label_keys_and_values_are_checked() -> None:
    obj = copy.deepcopy(STATEFULSET)
    obj["metadata"]["labels"]["bad key!"] = "v"
    obj["metadata"]["labels"]["ok"] = "-starts-with-a-dash"
    problems = "\n".join(manifest_problems(obj))
    assert "'bad key!' is not a qualified name" in problems
    assert "'-starts-with-a-dash' of 'ok' is not a valid label value" in problems
