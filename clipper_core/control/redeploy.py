"""Registering or deploying again: what a repeated call asks for.

A script run twice registers its apps and deploys its models twice.  With the
same definition that is a no-op that says so (``"unchanged: ..."``); a change
that can apply in place is applied (``"updated: ..."``); one that cannot is
refused, naming the difference.  A model version's code is identified by the
digest of its payload (``container["payload_sha256"]``, recorded at deploy).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clipper_core.auth import API_KEYS_NAMESPACE, hash_api_key, validate_api_keys
from clipper_core.control.apply import FIXED_SPEC
from clipper_core.control.desired import payload_digest
from clipper_core.control.reconcile import IN_PLACE_SPEC
from clipper_core.errors import Conflict
from clipper_core.selection import validate_policy
from clipper_core.store.records import AppRecord, ModelRecord

if TYPE_CHECKING:
    from clipper_core.control.plane import ControlPlane

__all__ = [
    "AppRedeploy",
    "ModelRedeploy",
    "app_redeploy",
    "model_redeploy",
    "put_app",
    "put_model",
]

#: What a call that created something answers (Clipper's management reply).
CREATED = "Success!"


async def put_app(control: ControlPlane, rec: AppRecord, api_keys: list[str] | None) -> str:
    """Register an app, or compare it with the one of that name (see
    :func:`app_redeploy`): the same changes nothing, a new objective or default
    output applies in place, a new policy restarts learning, API keys (when
    given) replace the old.

    Returns:
        ``"Success!"``, ``"unchanged: ..."`` or ``"updated: ..."``.

    Raises:
        Conflict: The app exists with another input type.
    """
    have = await asyncio.to_thread(control.store.get_app, rec.name)
    if have is None:
        await control.register_app(rec, api_keys)
        return CREATED
    again = app_redeploy(have, rec)
    # Everything checked before the first write: a refusal changes nothing.
    if again.policy is not None:
        validate_policy(*again.policy)
    if api_keys is not None:
        validate_api_keys(api_keys)
    if again.spec:
        await control.update_app(rec.name, **again.spec)
    if again.policy is not None:
        await control.set_selection_policy(rec.name, *again.policy)
    if api_keys is not None:
        digests = sorted({hash_api_key(k) for k in api_keys})
        stored = await asyncio.to_thread(control.store.get_kv, API_KEYS_NAMESPACE, rec.name)
        if digests != sorted(stored or []):
            await control.set_app_api_keys(rec.name, api_keys)
            again.changes.append("API keys replaced")
    if not again.changes:
        return f"unchanged: application {rec.name} is registered as asked"
    return f"updated: application {rec.name}: {', '.join(again.changes)}"


async def put_model(
    control: ControlPlane, rec: ModelRecord, payload_b64: str | None, make_current: bool
) -> str:
    """Deploy a model version, or compare it with the deployed one (see
    :func:`model_redeploy`): the same changes nothing (its current version
    included), in-place settings are updated, anything else is refused.

    Returns:
        ``"Success!"``, ``"unchanged: ..."`` or ``"updated: ..."``.

    Raises:
        Conflict: The version exists with other code or fixed settings.
    """
    have = await asyncio.to_thread(control.store.get_model, rec.name, rec.version)
    if have is None:
        await control.deploy_model(rec, payload_b64=payload_b64, make_current=make_current)
        return CREATED
    digest = None if payload_b64 is None else await asyncio.to_thread(payload_digest, payload_b64)
    again = model_redeploy(have, rec, digest)
    if not again.spec:
        return f"unchanged: model {rec.key} is deployed with this code and settings"
    await control.update_model_spec(rec.name, rec.version, **again.spec)
    return f"updated: model {rec.key}: {', '.join(again.changes)}"


#: Container fields that say where a version's files are, not what it is.
_LOCATION_FIELDS = frozenset({"path", "python_path", "payload_sha256"})


def _shown(value: Any) -> str:
    return "default" if value is None else repr(value)


def _change(what: str, old: Any, new: Any) -> str:
    return f"{what} {_shown(old)} -> {_shown(new)}"


@dataclass
class AppRedeploy:
    """What registering an existing app again changes.

    Attributes:
        spec: ``slo_micros`` / ``default_output`` to update in place.
        policy: The new selection policy (and its options), when it changed.
        changes: Each change, in words.
    """

    spec: dict[str, Any] = field(default_factory=dict)
    policy: tuple[str, dict[str, Any]] | None = None
    changes: list[str] = field(default_factory=list)


def app_redeploy(have: AppRecord, want: AppRecord) -> AppRedeploy:
    """Compare an app as registered with the same name asked for again.

    Raises:
        Conflict: Its input type differs (fixed for an app's life).
    """
    if want.input_type != have.input_type:
        raise Conflict(
            f"application {have.name} exists with input_type {have.input_type}, not"
            f" {want.input_type}: an app's input type cannot change; unregister it"
            " first or use another name"
        )
    out = AppRedeploy()
    for key in ("slo_micros", "default_output"):
        if getattr(want, key) != getattr(have, key):
            out.spec[key] = getattr(want, key)
            out.changes.append(_change(key, getattr(have, key), getattr(want, key)))
    if (want.policy, want.policy_config) != (have.policy, have.policy_config):
        out.policy = (want.policy, dict(want.policy_config))
        out.changes.append(
            _change("policy", have.policy, want.policy) + " (what the old policy learned restarts)"
            if want.policy != have.policy
            else _change("policy_config", have.policy_config, want.policy_config)
        )
    return out


@dataclass
class ModelRedeploy:
    """What deploying an existing model version again changes.

    Attributes:
        spec: Settings to update in place (see ``IN_PLACE_SPEC``).
        changes: Each change, in words.
    """

    spec: dict[str, Any] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)


def model_redeploy(
    have: ModelRecord, want: ModelRecord, payload_sha256: str | None
) -> ModelRedeploy:
    """Compare a deployed version with a deploy of the same name and version.

    Args:
        have: The deployed version.
        want: The version asked for (its container without the payload's digest).
        payload_sha256: The digest of the payload sent, if any.

    Raises:
        Conflict: Its code, input type, container or a setting fixed at start
            differs: a deployed version cannot change that; deploy a new version.
    """
    refused: list[str] = []
    if want.input_type != have.input_type:
        refused.append(_change("input_type", have.input_type, want.input_type))
    old_digest = have.container.get("payload_sha256")
    if payload_sha256 != old_digest:
        if payload_sha256 is None or old_digest is None:
            refused.append("one of them has a payload and the other none")
        else:
            refused.append(
                f"its code differs (payload sha256 {old_digest[:12]} -> {payload_sha256[:12]})"
            )
    container_keys = (set(have.container) | set(want.container)) - _LOCATION_FIELDS
    for key in sorted(container_keys):
        if have.container.get(key) != want.container.get(key):
            refused.append(f"container field {key!r} differs")
    refused += [
        _change(f, getattr(have, f), getattr(want, f))
        for f in FIXED_SPEC
        if getattr(want, f) != getattr(have, f)
    ]
    if refused:
        raise Conflict(
            f"model {have.key} is deployed already, and {'; '.join(refused)}: a deployed"
            " version cannot change that; deploy it as a new version"
        )
    out = ModelRedeploy()
    for f in IN_PLACE_SPEC:
        if getattr(want, f) != getattr(have, f):
            out.spec[f] = getattr(want, f)
            out.changes.append(_change(f, getattr(have, f), getattr(want, f)))
    return out
