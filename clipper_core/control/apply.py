"""Declarative configuration: the diff between a file's desired state and the
store's, as a list of :class:`Change` s in the order they are applied.

Pure: no I/O.  :meth:`ControlPlane.apply <clipper_core.control.ControlPlane.apply>`
reads the store into a :class:`CurrentState`, calls :func:`diff`, and carries the
changes out (``control.apply_steps``).

The rules:

* An object the file describes is made to match it; one it does not describe is
  left alone, unless ``prune`` is set (then it is deleted).  An application is
  described whole: links and API keys absent from its entry are removed.
* A model version's identity (input type, container kind, code) never changes
  in place: a change is refused, naming the difference, and the fix is a new
  version.  Its code is compared by the digest of its source text
  (``source_sha256``, computed by the client from the definition ``source``
  names), else by the digest of its pickled payload (``payload_sha256``).
* Of a version's spec, :data:`~clipper_core.control.reconcile.IN_PLACE_SPEC`
  changes in place (replicas scale; batching settings apply to the next batch);
  ``batch_size``, ``queue_capacity``, ``cpus`` and ``memory_limit_mb`` are fixed
  when its replicas and queue start, so a change of them is refused too.
* Queries of a model go to the version marked ``current = true``, else to the
  file's last version of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from clipper_core.auth import hash_api_key
from clipper_core.control.desired import DesiredApp, DesiredState
from clipper_core.control.pipeline_difference import pipeline_difference
from clipper_core.control.reconcile import IN_PLACE_SPEC
from clipper_core.errors import BadInput, ClipperError
from clipper_core.pipelines.model import new_version_refusal
from clipper_core.pipelines.model import validate as validate_pipeline
from clipper_core.store.records import AppRecord, ModelRecord, PipelineRecord

__all__ = ["Change", "CurrentState", "DesiredState", "diff", "diff_pipelines"]

ChangeKind = Literal["create", "update", "delete", "unchanged"]
ChangeWhat = Literal["model", "app", "link", "pipeline"]

#: Spec fields fixed when a version's replicas and queue start, and why.
FIXED_SPEC = {
    "batch_size": "its batch controller is built when the version starts",
    "controller": "its batch controller is built when the version starts",
    "queue_capacity": "its queue is allocated when the version starts",
    "cpus": "its replicas are pinned when they start",
    "memory_limit_mb": "its replicas are limited when they start",
}

#: App fields that change in place, grouped by the ControlPlane call that does it.
APP_SETTINGS = ("slo_micros", "default_output")
APP_POLICY = ("policy", "policy_config")


@dataclass(frozen=True)
class Change:
    """One difference between the file and the store (or the lack of one).

    Attributes:
        kind: ``create``, ``update``, ``delete`` or ``unchanged``.
        what: ``model`` (a version ``name:version``, or a model's current
            version, named ``name``), ``app``, ``link`` (``app -> model``) or
            ``pipeline``.
        name: What it names.
        detail: The difference, for people (``num_replicas 1 -> 2``).
        fields: The fields that differ (``("num_replicas",)``; ``("current",)``
            for a model's current version).
    """

    kind: ChangeKind
    what: ChangeWhat
    name: str
    detail: str = ""
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{self.kind} {self.what} {self.name}"
        return f"{text}: {self.detail}" if self.detail else text

    def to_dict(self) -> dict[str, Any]:
        """The JSON form the management API answers (``text``: :meth:`__str__`)."""
        return {
            "kind": self.kind,
            "what": self.what,
            "name": self.name,
            "detail": self.detail,
            "fields": list(self.fields),
            "text": str(self),
        }


@dataclass(frozen=True)
class CurrentState:
    """What the store holds, as :func:`diff` compares it.

    Attributes:
        models: Every model version.
        current_versions: Model name -> its current version.
        apps: Every application.
        links: App name -> the models linked to it.
        api_key_digests: App or pipeline name -> the digests of its API keys.
        pipelines: Pipeline name -> ``PipelineRecord.to_dict()``.
    """

    models: tuple[ModelRecord, ...] = ()
    current_versions: Mapping[str, str] = field(default_factory=dict)
    apps: tuple[AppRecord, ...] = ()
    links: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    api_key_digests: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    pipelines: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def diff(desired: DesiredState, current: CurrentState, *, prune: bool = False) -> list[Change]:
    """The changes that make ``current`` match ``desired``, in the order to apply
    them: model versions, current versions, (with ``prune``) deletions of the
    pipelines not in the file, apps, links, (with ``prune``) deletions of the apps
    not in the file, pipelines, then (with ``prune``) deletions of the model
    versions not in the file.  A pipeline and an app cannot share a name, so the
    one that gives a name up goes before the one that takes it.

    Raises:
        BadInput: Something the file asks for cannot be done in place (a model
            version's identity or fixed spec changed), or an app links a model
            that neither the file nor (without ``prune``) the store has; every
            refusal is listed.
    """
    refusals: list[str] = []
    changes = _model_changes(desired, current, refusals)
    refusals += _linked_type_refusals(desired, current, changes, prune)
    refusals += _pipeline_take_refusals(desired, current, changes)
    changes += _current_version_changes(desired, current)
    apps = _app_changes(desired, current, prune, refusals)
    refusals += _app_name_refusals(desired, current, prune)
    refusals += _pipeline_refusals(desired, current, prune)
    if refusals:
        raise BadInput("cannot apply:\n  " + "\n  ".join(refusals))
    upserts, deletions = diff_pipelines(
        desired.pipelines,
        current.pipelines,
        prune=prune,
        keys=desired.pipeline_keys,
        digests=current.api_key_digests,
    )
    changes += deletions  # empty without prune
    changes += apps
    if prune:
        changes += _pruned_apps(desired, current)
    changes += upserts
    if prune:
        changes += _pruned_models(desired, current)
    return changes


# -- models ----------------------------------------------------------------------------


def _shown(value: Any) -> str:
    return "default" if value is None else str(value)


def _model_changes(
    desired: DesiredState, current: CurrentState, refusals: list[str]
) -> list[Change]:
    have = {m.key: m for m in current.models}
    out: list[Change] = []
    for dm in desired.models:
        want = dm.record
        old = have.get(want.key)
        if old is None:
            out.append(Change("create", "model", want.key, f"{want.num_replicas} replica(s)"))
            continue
        refused = _identity_difference(want, old)
        refused += [
            f"{f} {_shown(getattr(old, f))} -> {_shown(getattr(want, f))} ({why})"
            for f, why in FIXED_SPEC.items()
            if getattr(want, f) != getattr(old, f)
        ]
        if refused:
            refusals.append(
                f"model {want.key}: {'; '.join(refused)}: a deployed version cannot change"
                " that in place; give the file's model a new version"
            )
            continue
        changed = [f for f in IN_PLACE_SPEC if getattr(want, f) != getattr(old, f)]
        if changed:
            detail = ", ".join(
                f"{f} {_shown(getattr(old, f))} -> {_shown(getattr(want, f))}" for f in changed
            )
            out.append(Change("update", "model", want.key, detail, tuple(changed)))
        else:
            out.append(Change("unchanged", "model", want.key))
    return out


def _linked_type_refusals(
    desired: DesiredState, current: CurrentState, changes: list[Change], prune: bool
) -> list[str]:
    """A new version must take what the apps linked to its model send (the store
    refuses it otherwise, after the file's earlier changes were made)."""
    created = {c.name for c in changes if c.kind == "create" and c.what == "model"}
    # The server's apps count even with prune: models are deployed before the
    # apps prune deletes, and the store refuses the version while they link it.
    types = {a.name: a.input_type for a in current.apps}
    links: dict[str, set[str]] = {}
    for app, models in current.links.items():
        for m in models:
            links.setdefault(m, set()).add(app)
    filed = {da.record.name for da in desired.apps}
    for da in desired.apps:  # the file's apps replace the store's links and types
        types[da.record.name] = da.record.input_type
        for apps in links.values():
            apps.discard(da.record.name)
        for m in da.models:
            links.setdefault(m, set()).add(da.record.name)
    return [
        f"model {dm.record.key} takes {dm.record.input_type}, but application {app}"
        f" (linked to model {dm.record.name}) sends {types[app]}"
        + (
            "; prune deletes that app only after the models are deployed: delete it first"
            if prune and app not in filed
            else ""
        )
        for dm in desired.models
        if dm.record.key in created
        for app in sorted(links.get(dm.record.name, ()))
        if app in types and types[app] != dm.record.input_type
    ]


def _pipeline_take_refusals(
    desired: DesiredState, current: CurrentState, changes: list[Change]
) -> list[str]:
    """A new version must keep the store's pipelines that use its model valid (the
    deploy refuses it otherwise, after the file's earlier changes were made).  The
    store's pipelines count even when the file replaces them or prune deletes
    them: models are deployed first."""
    created = {c.name for c in changes if c.kind == "create" and c.what == "model"}
    pipelines = [PipelineRecord.from_dict(dict(p)) for p in current.pipelines.values()]
    if not created or not pipelines:
        return []
    types: dict[str, dict[str, str]] = {}
    for m in current.models:
        types.setdefault(m.name, {})[m.version] = m.input_type
    refusals = []
    for dm in desired.models:  # deployed in this order, each seeing those before
        rec = dm.record
        if rec.key in created:
            refusal = new_version_refusal(rec, pipelines, types)
            if refusal is not None:
                refusals.append(refusal)
            types.setdefault(rec.name, {})[rec.version] = rec.input_type
    return refusals


def _identity_difference(want: ModelRecord, old: ModelRecord) -> list[str]:
    if want.input_type != old.input_type:
        return [f"input_type {old.input_type} -> {want.input_type}"]
    kind, old_kind = want.container.get("kind"), old.container.get("kind", "external")
    if kind != old_kind:
        return [f"container kind {old_kind} -> {kind}"]
    if want.registered_by_hand:
        return []
    for key in ("source_sha256", "payload_sha256"):
        new_digest, old_digest = want.container.get(key), old.container.get(key)
        if new_digest is not None and old_digest is not None:
            if new_digest == old_digest:
                return []
            what = "source" if key == "source_sha256" else "pickled payload"
            return [f"its code changed ({what} sha256 {old_digest[:12]} -> {new_digest[:12]})"]
    return [
        "its code cannot be compared (the deployed version records no digest of its code:"
        " it was not deployed by apply)"
    ]


def _current_version_changes(desired: DesiredState, current: CurrentState) -> list[Change]:
    out: list[Change] = []
    deployed = {m.name for m in current.models}
    for name in dict.fromkeys(m.record.name for m in desired.models):
        want = desired.current_version(name)
        assert want is not None
        have = current.current_versions.get(name)
        if name not in deployed:
            # Its first deployed version becomes current by itself.
            have = next(m.record.version for m in desired.models if m.record.name == name)
        if want != have:
            detail = f"current version {have or 'none'} -> {want}"
            out.append(Change("update", "model", name, detail, ("current",)))
    return out


# -- applications and links --------------------------------------------------------------


def _app_changes(
    desired: DesiredState, current: CurrentState, prune: bool, refusals: list[str]
) -> list[Change]:
    have = {a.name: a for a in current.apps}
    known_models = {m.record.name for m in desired.models}
    if not prune:
        known_models |= {m.name for m in current.models}
    out: list[Change] = []
    links: list[Change] = []
    for da in desired.apps:
        rec = da.record
        for model in da.models:
            if model not in known_models:
                where = "this file" if prune else "this file nor the server"
                refusals.append(f"app {rec.name} links model {model!r}, which neither {where} has")
        old = have.get(rec.name)
        if old is None:
            keys = f", {len(da.api_keys)} API key(s)" if da.api_keys else ""
            out.append(Change("create", "app", rec.name, f"slo {rec.slo_micros} us{keys}"))
            links += [Change("create", "link", f"{rec.name} -> {m}") for m in da.models]
            continue
        if rec.input_type != old.input_type:
            refusals.append(
                f"app {rec.name}: input_type {old.input_type} -> {rec.input_type}: an"
                " application's input type cannot change; delete it or use a new name"
            )
            continue
        out.append(_app_update(da, old, current.api_key_digests.get(rec.name, ())))
        links += _link_changes(da, current.links.get(rec.name, ()))
    return out + links


def _app_update(da: DesiredApp, old: AppRecord, digests: tuple[str, ...]) -> Change:
    rec = da.record
    changed = [f for f in APP_SETTINGS + APP_POLICY if getattr(rec, f) != getattr(old, f)]
    details = [f"{f} {getattr(old, f)!r} -> {getattr(rec, f)!r}" for f in changed]
    if sorted({hash_api_key(k) for k in da.api_keys}) != sorted(digests):
        changed.append("api_keys")
        details.append(f"api_keys replaced ({len(digests)} -> {len(da.api_keys)} key(s))")
    if not changed:
        return Change("unchanged", "app", rec.name)
    return Change("update", "app", rec.name, ", ".join(details), tuple(changed))


def _link_changes(da: DesiredApp, linked: tuple[str, ...]) -> list[Change]:
    name = da.record.name
    out = [Change("delete", "link", f"{name} -> {m}") for m in linked if m not in da.models]
    for m in da.models:
        out.append(Change("unchanged" if m in linked else "create", "link", f"{name} -> {m}"))
    return out


def _app_name_refusals(desired: DesiredState, current: CurrentState, prune: bool) -> list[str]:
    """An app of the file named like a pipeline the store keeps (the store refuses
    it, after the file's models were deployed).  A pipeline of the file with an
    app's name is refused by :func:`_pipeline_refusals`."""
    if prune:
        return []  # the store's pipelines the file leaves out are deleted first
    filed = {str(p["name"]) for p in desired.pipelines}
    return [
        f"app {da.record.name}: pipeline {da.record.name} on the server has its name"
        " (an application and a pipeline cannot share one); delete that pipeline"
        " first, or apply with prune"
        for da in desired.apps
        if da.record.name in current.pipelines and da.record.name not in filed
    ]


def _pruned_apps(desired: DesiredState, current: CurrentState) -> list[Change]:
    apps = {a.record.name for a in desired.apps}
    return [Change("delete", "app", a.name) for a in current.apps if a.name not in apps]


def _pruned_models(desired: DesiredState, current: CurrentState) -> list[Change]:
    versions = {m.record.key for m in desired.models}
    return [Change("delete", "model", m.key) for m in current.models if m.key not in versions]


# -- pipelines (issue 14's pipelines branch) -------------------------------------------


def diff_pipelines(
    desired: tuple[dict[str, Any], ...],
    current: Mapping[str, Mapping[str, Any]],
    *,
    prune: bool,
    keys: Mapping[str, tuple[str, ...]] | None = None,
    digests: Mapping[str, tuple[str, ...]] | None = None,
) -> tuple[list[Change], list[Change]]:
    """The pipeline changes: (creates, updates and unchanged ones; deletions of
    the pipelines the file does not describe, which only ``prune`` applies).

    Both sides are ``PipelineRecord.to_dict()`` forms; ``keys`` are the file's
    API keys per pipeline, ``digests`` the store's (a pipeline absent from
    either needs no key)."""
    keys, digests = keys or {}, digests or {}
    upserts: list[Change] = []
    for want in desired:
        name = str(want["name"])
        old = current.get(name)
        wanted_keys = keys.get(name, ())
        if old is None:
            more = f", {len(wanted_keys)} API key(s)" if wanted_keys else ""
            upserts.append(
                Change("create", "pipeline", name, f"{len(want['stages'])} stage(s){more}")
            )
            continue
        details, fields = ([], ()) if dict(old) == want else pipeline_difference(old, want)
        had = digests.get(name, ())
        if sorted({hash_api_key(k) for k in wanted_keys}) != sorted(had):
            details = [*details, f"api_keys replaced ({len(had)} -> {len(wanted_keys)} key(s))"]
            fields = (*fields, "api_keys")
        if not fields:
            upserts.append(Change("unchanged", "pipeline", name))
        else:
            upserts.append(Change("update", "pipeline", name, ", ".join(details), fields))
    names = {str(p["name"]) for p in desired}
    deletions = [Change("delete", "pipeline", n) for n in sorted(current) if n not in names]
    return upserts, deletions if prune else []


def _pipeline_refusals(desired: DesiredState, current: CurrentState, prune: bool) -> list[str]:
    """Each pipeline of the file checked as its graph will be once every other change
    is made (the models and apps the file leaves, and without ``prune`` the store's
    others): found before the first change, not after the models are deployed."""
    if not desired.pipelines:
        return []
    records = {m.record.key: m.record for m in desired.models}
    apps = {a.record.name for a in desired.apps}
    if not prune:
        records = {**{m.key: m for m in current.models}, **records}
        apps |= {a.name for a in current.apps}
    types: dict[str, dict[str, str]] = {}
    for rec in records.values():
        types.setdefault(rec.name, {})[rec.version] = rec.input_type
    refusals = []
    for raw in desired.pipelines:
        name = raw["name"]
        if name in apps:
            refusals.append(f"pipeline {name}: an application has its name")
            continue
        try:
            validate_pipeline(PipelineRecord.from_dict(raw), types)
        except ClipperError as exc:
            refusals.append(str(exc))
    return refusals
