"""Carrying out a declarative file's changes: read what the store holds, then make
each :class:`~clipper_core.control.apply.Change` through the control plane's
writes, in the order :func:`~clipper_core.control.apply.diff` gave them.

The writes are the ``ControlPlane`` 's own (typed here as the :class:`Writes`
Protocol, so that this module does not import the class that calls it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from clipper_core.auth import API_KEYS_NAMESPACE
from clipper_core.control.apply import APP_POLICY, APP_SETTINGS, Change, CurrentState
from clipper_core.control.desired import DesiredState
from clipper_core.store.base import DesiredStateReader
from clipper_core.store.records import AppRecord, ModelRecord, PipelineRecord

__all__ = ["Writes", "carry_out", "read_current"]


class Writes(Protocol):
    """The ControlPlane writes a file's changes need."""

    async def deploy_model(self, rec: ModelRecord, *, payload_b64: str | None = None) -> None: ...

    async def update_model_spec(self, name: str, version: str, /, **spec: Any) -> None: ...

    async def set_model_version(self, name: str, version: str) -> None: ...

    async def delete_model_version(self, name: str, version: str) -> None: ...

    async def register_app(self, rec: AppRecord, api_keys: list[str] | None = None) -> None: ...

    async def update_app(
        self, name: str, *, slo_micros: int | None = None, default_output: str | None = None
    ) -> None: ...

    async def set_selection_policy(
        self, name: str, policy: str, policy_config: dict[str, Any] | None = None
    ) -> None: ...

    async def set_app_api_keys(self, name: str, keys: list[str]) -> None: ...

    async def delete_app(self, name: str) -> None: ...

    async def link(self, app: str, *models: str) -> None: ...

    async def unlink(self, app: str, model: str) -> None: ...

    async def register_pipeline(
        self, rec: PipelineRecord, api_keys: list[str] | None = None
    ) -> None: ...

    async def set_pipeline_api_keys(self, name: str, keys: list[str]) -> None: ...

    async def update_pipeline(self, rec: PipelineRecord) -> bool: ...

    async def delete_pipeline(self, name: str) -> None: ...


def read_current(store: DesiredStateReader) -> CurrentState:
    """What ``store`` holds, as the diff compares it (blocking: run it in a thread)."""
    models = store.list_models()
    apps = store.list_apps()
    pipelines = read_pipelines(store)
    return CurrentState(
        models=tuple(models),
        current_versions={
            name: v
            for name in {m.name for m in models}
            if (v := store.get_current_version(name)) is not None
        },
        apps=tuple(apps),
        links={a.name: tuple(store.linked_models(a.name)) for a in apps},
        api_key_digests={
            name: tuple(store.get_kv(API_KEYS_NAMESPACE, name) or ())
            for name in [a.name for a in apps] + list(pipelines)
        },
        pipelines=pipelines,
    )


async def carry_out(control: Writes, desired: DesiredState, changes: list[Change]) -> None:
    """Make every change that is not ``unchanged``, in order; the first failure
    stops it (what was made before stays: apply the file again once fixed)."""
    models = {m.record.key: m for m in desired.models}
    apps = {a.record.name: a for a in desired.apps}
    for change in changes:
        if change.kind == "unchanged":
            continue
        if change.what == "model":
            await _model(control, change, desired, models)
        elif change.what == "app":
            await _app(control, change, apps)
        elif change.what == "link":
            app, _, model = change.name.partition(" -> ")
            if change.kind == "create":
                await control.link(app, model)
            else:
                await control.unlink(app, model)
        else:
            await apply_pipeline_change(control, change, desired)


async def _model(
    control: Writes, change: Change, desired: DesiredState, models: Mapping[str, Any]
) -> None:
    if change.fields == ("current",):
        version = desired.current_version(change.name)
        assert version is not None
        await control.set_model_version(change.name, version)
        return
    name, _, version = change.name.partition(":")
    if change.kind == "create":
        dm = models[change.name]
        await control.deploy_model(dm.record, payload_b64=dm.payload_b64)
    elif change.kind == "update":
        rec = models[change.name].record
        await control.update_model_spec(
            name, version, **{f: getattr(rec, f) for f in change.fields}
        )
    else:
        await control.delete_model_version(name, version)


async def _app(control: Writes, change: Change, apps: Mapping[str, Any]) -> None:
    if change.kind == "delete":
        await control.delete_app(change.name)
        return
    da = apps[change.name]
    rec: AppRecord = da.record
    if change.kind == "create":
        await control.register_app(rec, list(da.api_keys))
        return
    fields = set(change.fields)
    if fields & set(APP_SETTINGS):
        await control.update_app(
            rec.name, slo_micros=rec.slo_micros, default_output=rec.default_output
        )
    if fields & set(APP_POLICY):
        await control.set_selection_policy(rec.name, rec.policy, rec.policy_config)
    if "api_keys" in fields:
        await control.set_app_api_keys(rec.name, list(da.api_keys))


# -- pipelines -------------------------------------------------------------------------


def read_pipelines(store: DesiredStateReader) -> dict[str, dict[str, Any]]:
    """Pipeline name -> its record's ``to_dict()``."""
    return {p.name: p.to_dict() for p in store.list_pipelines()}


async def apply_pipeline_change(control: Writes, change: Change, desired: DesiredState) -> None:
    """Create, update or delete one pipeline."""
    if change.kind == "delete":
        await control.delete_pipeline(change.name)
        return
    data = next(p for p in desired.pipelines if p["name"] == change.name)
    rec = PipelineRecord.from_dict(data)
    keys = list(desired.pipeline_keys.get(change.name, ()))
    if change.kind == "create":
        await control.register_pipeline(rec, keys)
        return
    if set(change.fields) - {"api_keys"}:
        await control.update_pipeline(rec)
    if "api_keys" in change.fields:
        await control.set_pipeline_api_keys(change.name, keys)
