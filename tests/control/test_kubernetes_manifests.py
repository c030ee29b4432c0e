"""The manifests the Kubernetes manager renders, validated offline against the
Kubernetes 1.30-1.36 schemas (``kubernetes-validate``, strict: no unknown field)
and by the manager's own checks, for every record shape it starts."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clipper_core.errors import BadInput
from clipper_core.managers.k8s_manifests import (
    TOKEN_DIR,
    KubernetesSettings,
    container_args,
    object_name,
    render_model_objects,
)
from clipper_core.managers.kubernetes_checks import check_manifest
from clipper_core.managers.kubernetes_frontend import (
    FrontendSpec,
    frontend_manifest_yaml,
    render_frontend_objects,
)
from clipper_core.store.records import ModelRecord

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="needs kubernetes-validate (the test extra)"
)

#: Kubernetes versions whose schemas the manifests must satisfy.
K8S_VERSIONS = ("1.30.0", "1.33.0", "1.36.0")
SETTINGS = KubernetesSettings(namespace="serving", image="registry.local/clipper-model:1")


def record(name: str = "m", version: str = "1", **fields: Any) -> ModelRecord:
    fields.setdefault("container", {"kind": "closure", "path": "/state/models/m/1/model.pkl"})
    return ModelRecord(name=name, version=version, input_type="doubles", labels=[], **fields)


SHAPES = {
    "closure": record(),
    "closure-cpus-memory": record(cpus=[0, 1, 3], memory_limit_mb=768),
    "class": record(container={"kind": "class", "class": "pkg.models:Scorer"}),
    "class-with-folder": record(
        container={"kind": "class", "class": "pkg.models:Scorer", "model_path": "/s/m"},
        memory_limit_mb=256,
    ),
    "adapter": record(
        "Sk_Learn.Model",
        "2024.01_a",
        container={
            "kind": "sklearn",
            "adapter": "sklearn",
            "path": "/state/models/x",
            "deploy_env": {"python": "3.11", "packages": {"scikit-learn": "1.5.0"}},
        },
        cpus=[2],
    ),
    "gpu-placement": record(
        container={
            "kind": "class",
            "class": "pkg:M",
            "placement": [{"gpu": 0}, {"gpu": 1}],
            "image": "registry.local/clipper-model-cuda:1",
        }
    ),
}


def _validate(obj: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("token", [None, "per-version-token"], ids=["shared-secret", "own-secret"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_model_objects_pass_the_schemas_and_the_checks(shape: str, token: str | None) -> None:
    rec = SHAPES[shape]
    objects = render_model_objects(rec, 3, SETTINGS, token)
    kinds = [o["kind"] for o in objects]
    assert kinds == (["Secret"] if token else []) + ["Service", "StatefulSet"]
    for obj in objects:
        _validate(obj)
        check_manifest(obj)
        assert obj["metadata"]["namespace"] == "serving"
        assert obj["metadata"]["annotations"] == {
            "clipper-core.io/model": rec.name,
            "clipper-core.io/version": rec.version,
        }
    sts = objects[-1]
    pod = sts["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "bundle-token")
    secret = objects[0]["metadata"]["name"] if token else SETTINGS.bundle_secret
    assert volume["secret"]["secretName"] == secret
    if token:
        assert objects[0]["stringData"] == {"token": token}


def test_the_statefulset_scales_the_version_with_matching_labels_and_grpc_probes() -> None:
    rec = SHAPES["closure-cpus-memory"]
    service, sts = render_model_objects(rec, 2, SETTINGS)
    spec = sts["spec"]
    name = object_name("m", "1")
    assert sts["metadata"]["name"] == service["metadata"]["name"] == name
    assert spec["replicas"] == 2 and spec["serviceName"] == name
    assert spec["podManagementPolicy"] == "Parallel"
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert service["spec"]["clusterIP"] == "None"
    (container,) = spec["template"]["spec"]["containers"]
    assert container["image"] == SETTINGS.image
    assert container["ports"] == [{"name": "grpc", "containerPort": 7000, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": 7000}
    # cpus -> as many CPUs as listed; memory_limit_mb -> Mi; requests = limits.
    assert container["resources"] == {
        "requests": {"cpu": "3", "memory": "768Mi"},
        "limits": {"cpu": "3", "memory": "768Mi"},
    }
    env = {e["name"]: e for e in container["env"]}
    assert env["OMP_NUM_THREADS"]["value"] == "3"
    assert env["CLIPPER_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.labels['apps.kubernetes.io/pod-index']"
    )


def test_resources_follow_the_record() -> None:
    def resources(rec: ModelRecord) -> dict[str, Any]:
        sts = render_model_objects(rec, 1, SETTINGS)[-1]
        result: dict[str, Any] = sts["spec"]["template"]["spec"]["containers"][0]["resources"]
        return result

    assert resources(SHAPES["closure"]) == {}
    assert resources(SHAPES["class-with-folder"])["limits"] == {"memory": "256Mi"}
    assert resources(SHAPES["adapter"])["limits"] == {"cpu": "1"}
    assert resources(SHAPES["gpu-placement"])["limits"] == {"nvidia.com/gpu": "1"}


def test_container_args_fetch_the_bundle_and_say_how_to_load_it() -> None:
    def args(rec: ModelRecord) -> list[str]:
        return container_args(rec, SETTINGS)

    closure = args(SHAPES["closure"])
    i = closure.index("--bundle-url")
    assert closure[i + 1] == "http://clipper-frontend:1338/admin/bundle/m/1"
    assert closure[closure.index("--bundle-token-file") + 1] == f"{TOKEN_DIR}/token"
    assert "--closure" not in closure and "--model-path" not in closure  # the bundle is
    pinned = record(container={"kind": "closure", "path": "/x.pkl", "payload_sha256": "ab12"})
    assert args(pinned)[args(pinned).index("--bundle-url") + 1].endswith("/bundle/m/1?sha256=ab12")
    assert closure[closure.index("--host") + 1] == "0.0.0.0"
    assert closure[closure.index("--advertise-address") + 1] == "$(CLIPPER_POD_IP):7000"
    assert args(SHAPES["class"])[-2:] == ["--model-class", "pkg.models:Scorer"]
    assert args(SHAPES["class-with-folder"])[-2:] == ["--model-class", "pkg.models:Scorer"]
    adapter = args(SHAPES["adapter"])
    assert adapter[adapter.index("--adapter") + 1] == "sklearn"
    assert "/bundle/Sk_Learn.Model/2024.01_a" in adapter[adapter.index("--bundle-url") + 1]
    assert adapter[adapter.index("--deploy-env") + 1].startswith('{"python":"3.11"')
    with pytest.raises(BadInput, match="no container to start"):
        container_args(record(container={"kind": "mystery"}), SETTINGS)


def test_the_container_cli_takes_the_rendered_args() -> None:
    """Every flag in the pod spec is one ``python -m model_containers`` knows; the
    bundle flags are the agreed ones (``--bundle-url``, ``--bundle-token-file``)."""
    from model_containers.cli import build_parser

    for name, rec in SHAPES.items():
        args = [a.replace("$(CLIPPER_REPLICA_ID)", "0") for a in container_args(rec, SETTINGS)]
        parsed, unknown = build_parser().parse_known_args(args)
        assert parsed.model_name == rec.name, name
        assert unknown == [], (name, unknown)


DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


@given(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", fullmatch=True),
)
def test_object_names_are_dns_labels_for_any_model_name(model: str, version: str) -> None:
    name = object_name(model, version)
    assert DNS_LABEL.fullmatch(name) and len(name) <= 52
    assert object_name(model, version) == name  # deterministic


def test_object_names_stay_distinct_where_the_slug_is_the_same() -> None:
    pairs = [("a-b", "c"), ("a", "b-c"), ("Model", "1"), ("model", "1"), ("my_model", "1"),
             ("my.model", "1"), ("x" * 128, "1"), ("x" * 128, "2")]  # fmt: skip
    names = [object_name(m, v) for m, v in pairs]
    assert len(set(names)) == len(names)
    assert object_name("My_Model", "1").startswith("clipper-my-model-v1-")
    for rec in SHAPES.values():
        check_manifest(render_model_objects(rec, 1, SETTINGS)[-1])


def test_the_frontend_objects_pass_the_schemas_and_the_checks() -> None:
    spec = FrontendSpec(replicas=2, state_url="redis://redis:6379/0", models=SETTINGS)
    objects = render_frontend_objects(spec, admin_token="admin", bundle_token="bundles")
    assert [o["kind"] for o in objects] == [
        "ServiceAccount", "Role", "RoleBinding", "Secret", "Secret", "Deployment", "Service",
    ]  # fmt: skip
    for obj in objects:
        _validate(obj)
        check_manifest(obj)
    deployment, service = objects[-2], objects[-1]
    template = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"] == template["metadata"]["labels"]
    assert service["spec"]["selector"] == template["metadata"]["labels"]
    assert service["metadata"]["name"] == "clipper-frontend"
    assert SETTINGS.bundle_url.startswith("http://clipper-frontend:1338/")
    args = template["spec"]["containers"][0]["args"]
    assert args[0] == "serve"
    assert args[args.index("--container-manager") + 1] == "kubernetes"
    assert args[args.index("--state-url") + 1] == "redis://redis:6379/0"
    assert objects[4]["metadata"]["name"] == SETTINGS.bundle_secret
    assert frontend_manifest_yaml(objects).count("---\n") == len(objects)


def test_the_serve_options_exist_for_the_frontend_args() -> None:
    """The frontend Deployment's ``clipper serve`` arguments parse."""
    from clipper_core.cli import build_parser

    models = replace(SETTINGS, part_of="green", container_port=9000, startup_seconds=900)
    spec = FrontendSpec(state_url="redis://redis:6379/0", models=models)
    deployment = render_frontend_objects(spec, admin_token="a", bundle_token="b")[-2]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = build_parser().parse_args(args)
    assert parsed.container_manager == "kubernetes"
    assert parsed.kubernetes_namespace == "serving"
    assert parsed.kubernetes_image == SETTINGS.image
    assert parsed.host == "0.0.0.0"
    # The model pods' settings reach the frontend's manager (they were dropped).
    assert parsed.kubernetes_part_of == "green"
    assert (parsed.kubernetes_container_port, parsed.kubernetes_startup_seconds) == (9000, 900)


def test_two_installations_in_one_namespace_name_their_objects_apart() -> None:
    # The docstring's promise: another part_of is another installation, whose
    # objects must not be applied over this one's (a StatefulSet's selector
    # cannot change, and one scaling to 0 would delete the other's pods).
    rec = SHAPES["closure"]
    blue = replace(SETTINGS, part_of="blue")
    green = replace(SETTINGS, part_of="green")
    names = {
        part: {o["metadata"]["name"] for o in render_model_objects(rec, 1, s)}
        for part, s in (("default", SETTINGS), ("blue", blue), ("green", green))
    }
    assert not names["blue"] & names["green"] and not names["blue"] & names["default"]
    # The default installation keeps the names it always had.
    assert object_name(rec.name, rec.version) in names["default"]
    for s in (blue, green):
        for obj in render_model_objects(rec, 1, s):
            check_manifest(obj)
