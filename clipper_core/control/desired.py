"""The desired state a declarative file describes (``clipper apply -f app.toml``),
parsed from its JSON form and checked.

The client reads the file (TOML), turns each model's ``source`` into its pickled
code (``payload_b64``) and a digest of its source text (``source_sha256``), and
sends the rest as it is; :meth:`DesiredState.from_dict` checks every entry and
names the entry and field at fault.  Pure: no I/O.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clipper_core.auth import validate_api_keys
from clipper_core.clipper_api import validate_input_type
from clipper_core.errors import BadInput
from clipper_core.selection import validate_policy
from clipper_core.store.records import (
    EXTERNAL_KIND,
    AppRecord,
    ModelRecord,
    PipelineRecord,
    check_name,
)

__all__ = [
    "DesiredApp",
    "DesiredModel",
    "DesiredState",
    "decode_payload",
    "payload_digest",
]

#: The fields of a model entry, as the file spells them (``source`` is read by the
#: client and arrives as ``payload_b64`` + ``source_sha256`` + ``container``).
MODEL_FIELDS = (
    "name",
    "version",
    "input_type",
    "source",
    "external",
    "current",
    "num_replicas",
    "batch_size",
    "controller",
    "batch_wait_micros",
    "batch_timeout",
    "queue_capacity",
    "cache_enabled",
    "labels",
    "cpus",
    "memory_limit_mb",
)
_MODEL_WIRE_FIELDS = ("payload_b64", "source_sha256", "container")
APP_FIELDS = (
    "name",
    "input_type",
    "slo_micros",
    "default_output",
    "policy",
    "policy_config",
    "models",
    "api_keys",
)
PIPELINE_FIELDS = (
    "name",
    "input_type",
    "stages",
    "edges",
    "slo_micros",
    "default_output",
    "api_keys",
)
TOP_LEVEL = ("models", "apps", "pipelines")


#: Base64 characters decoded per call (a multiple of 4).  The GIL is free between
#: two calls, so a large payload decoded in a thread leaves the loop answering
#: queries (one call for 64 MiB held it ~0.3 s here).
_DECODE_CHARS = 1 << 20


def decode_payload(payload_b64: str) -> tuple[bytes, str]:
    """A base64 model payload's bytes and their SHA-256 (hex), decoded a piece
    at a time.

    Raises:
        BadInput: Not base64 (characters outside the alphabet, or wrong padding).
    """
    digest = hashlib.sha256()
    parts = []
    end = len(payload_b64)
    try:
        for start in range(0, end, _DECODE_CHARS):
            piece = payload_b64[start : start + _DECODE_CHARS]
            if start + _DECODE_CHARS < end and piece.endswith("="):
                raise ValueError("padding before the end")
            part = binascii.a2b_base64(piece, strict_mode=True)
            digest.update(part)
            parts.append(part)
    except (binascii.Error, ValueError) as exc:
        raise BadInput(f"model payload is not valid base64: {exc}") from None
    return b"".join(parts), digest.hexdigest()


def payload_digest(payload_b64: str) -> str:
    """The SHA-256 (hex) of a base64 model payload's bytes.

    Raises:
        BadInput: Not base64.
    """
    return decode_payload(payload_b64)[1]


@dataclass(frozen=True)
class DesiredModel:
    """One model version of the file.

    Attributes:
        record: The version as it would be deployed (``created_at`` aside); its
            container holds ``source_sha256`` and ``payload_sha256`` when known.
        payload_b64: Its pickled code (None: an ``external`` model, whose
            replicas are started by hand).
        current: Marked ``current = true`` (None: not marked).
    """

    record: ModelRecord
    payload_b64: str | None
    current: bool | None


@dataclass(frozen=True)
class DesiredApp:
    """One application of the file: its record, the models linked to it, and the
    API keys its queries need (plain text; compared by digest)."""

    record: AppRecord
    models: tuple[str, ...]
    api_keys: tuple[str, ...]


@dataclass(frozen=True)
class DesiredState:
    """The models, apps and pipelines of a declarative file, checked.

    Attributes:
        models: Model versions, in file order.
        apps: Applications, in file order.
        pipelines: Pipelines as ``PipelineRecord.to_dict()`` gives them (stage
            and edge fields filled in), in file order.
        pipeline_keys: Pipeline name -> the API keys its queries need (plain
            text; compared by digest; absent: none).
    """

    models: tuple[DesiredModel, ...] = ()
    apps: tuple[DesiredApp, ...] = ()
    pipelines: tuple[dict[str, Any], ...] = ()
    pipeline_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DesiredState:
        """Check the JSON form of a file.

        Raises:
            BadInput: An unknown or missing field, an invalid value, a duplicate
                entry, or two versions of one model marked current; the message
                names the entry (``models[1] (hello:2)``) and the field.
        """
        if not isinstance(data, Mapping):
            raise BadInput("the desired state must be an object with models, apps, pipelines")
        _no_unknown("the file", data, TOP_LEVEL)
        models = tuple(
            _model(f"models[{i}]", raw) for i, raw in enumerate(_entries(data, "models"))
        )
        apps = tuple(_app(f"apps[{i}]", raw) for i, raw in enumerate(_entries(data, "apps")))
        entries = [
            _pipeline(f"pipelines[{i}]", raw) for i, raw in enumerate(_entries(data, "pipelines"))
        ]
        pipelines = tuple(p for p, _ in entries)
        keys = {str(p["name"]): k for p, k in entries if k}
        state = cls(models, apps, pipelines, keys)
        state._check_unique()
        return state

    def _check_unique(self) -> None:
        _unique("model version", [m.record.key for m in self.models])
        _unique("application or pipeline", [a.record.name for a in self.apps] + self.pipeline_names)
        marked: dict[str, str] = {}
        for m in self.models:
            if m.current:
                other = marked.setdefault(m.record.name, m.record.version)
                if other != m.record.version:
                    raise BadInput(
                        f"model {m.record.name}: versions {other} and {m.record.version} are"
                        " both marked current; mark one"
                    )
        types: dict[str, str] = {}
        for m in self.models:
            types.setdefault(m.record.name, m.record.input_type)
        for a in self.apps:
            for model in a.models:
                if model in types and types[model] != a.record.input_type:
                    raise BadInput(
                        f"app {a.record.name} takes {a.record.input_type} but links model"
                        f" {model}, which takes {types[model]}"
                    )

    @property
    def pipeline_names(self) -> list[str]:
        return [str(p["name"]) for p in self.pipelines]

    def current_version(self, name: str) -> str | None:
        """The version of model ``name`` that queries should go to: the one marked
        ``current = true``, else the file's last version of it (None: the file
        has no version of it)."""
        versions = [m for m in self.models if m.record.name == name]
        for m in versions:
            if m.current:
                return m.record.version
        return versions[-1].record.version if versions else None


# -- entries ---------------------------------------------------------------------------


def _entries(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadInput(f"{key} must be a list of tables ([[{key}]]), got {type(value).__name__}")
    return value


def _no_unknown(
    where: str, raw: Mapping[str, Any], known: tuple[str, ...], hidden: tuple[str, ...] = ()
) -> None:
    unknown = sorted(set(raw) - set(known) - set(hidden))
    if unknown:
        raise BadInput(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}"
        )


def _table(
    where: str,
    raw: object,
    known: tuple[str, ...],
    required: tuple[str, ...],
    hidden: tuple[str, ...] = (),
) -> str:
    """Check an entry's keys (``hidden``: accepted, not advertised); return how to
    name it in messages: ``models[1] (hello:2)``."""
    if not isinstance(raw, Mapping):
        raise BadInput(f"{where} must be a table, got {raw!r}")
    if raw.get("name") is not None:
        version = raw.get("version")
        where += f" ({raw['name']}:{version})" if version is not None else f" ({raw['name']})"
    _no_unknown(where, raw, known, hidden)
    for key in required:
        if raw.get(key) is None:
            raise BadInput(f"{where}: missing field {key!r}")
    return where


def _unique(what: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise BadInput(f"{what} {name} is described twice")
        seen.add(name)


def _version(where: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadInput(f"{where}: version must be a string or an integer, got {value!r}")
    return str(value)


def _opt_bool(where: str, raw: Mapping[str, Any], key: str) -> bool | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadInput(f"{where}: {key} must be true or false, got {value!r}")
    return value


def _model(where: str, raw: object) -> DesiredModel:
    where = _table(where, raw, MODEL_FIELDS, ("name", "version", "input_type"), _MODEL_WIRE_FIELDS)
    assert isinstance(raw, Mapping)
    if "source" in raw:
        raise BadInput(
            f"{where}: 'source' is read by the client (clipper apply -f, or"
            " ClipperConnection.apply), which sends the code as payload_b64"
        )
    external = _opt_bool(where, raw, "external")
    current = _opt_bool(where, raw, "current")
    payload = raw.get("payload_b64")
    container = raw.get("container") or {}
    if not isinstance(container, dict):
        raise BadInput(f"{where}: container must be an object")
    container = dict(container)
    if external:
        if payload is not None:
            raise BadInput(f"{where}: an external model has no source")
        container = {"kind": EXTERNAL_KIND, **container}
    else:
        if not isinstance(payload, str):
            raise BadInput(
                f"{where}: missing field 'source' (its code: FILE.py:NAME or module:NAME),"
                " or external = true for replicas started by hand"
            )
        container.setdefault("kind", "closure")
        container["payload_sha256"] = payload_digest(payload)
    digest = raw.get("source_sha256")
    if digest is not None:
        if not isinstance(digest, str):
            raise BadInput(f"{where}: source_sha256 must be a hex string")
        container["source_sha256"] = digest
    settings = {
        k: raw[k]
        for k in (
            "batch_size",
            "controller",
            "batch_wait_micros",
            "batch_timeout",
            "queue_capacity",
            "cache_enabled",
            "cpus",
            "memory_limit_mb",
        )
        if raw.get(k) is not None
    }
    try:
        rec = ModelRecord(
            name=raw["name"],
            version=_version(where, raw["version"]),
            input_type=validate_input_type(raw["input_type"]),
            labels=raw.get("labels", []),
            container=container,
            num_replicas=raw.get("num_replicas", 0 if external else 1),
            **settings,
        )
    except BadInput as exc:
        raise BadInput(f"{where}: {exc}") from None
    return DesiredModel(rec, None if external else payload, current)


def _app(where: str, raw: object) -> DesiredApp:
    where = _table(where, raw, APP_FIELDS, ("name", "input_type"))
    assert isinstance(raw, Mapping)
    models = raw.get("models", [])
    try:
        if not isinstance(models, list):
            raise BadInput(f"models must be a list of model names, got {models!r}")
        for model in models:
            check_name("linked model name", model)
        if len(set(models)) != len(models):
            raise BadInput(f"models lists a model twice: {models!r}")
        keys = validate_api_keys(raw.get("api_keys"))
        rec = AppRecord(
            name=raw["name"],
            input_type=validate_input_type(raw["input_type"]),
            default_output=raw.get("default_output", "None"),
            slo_micros=raw.get("slo_micros", 100_000),
            policy=raw.get("policy", "single"),
            policy_config=raw.get("policy_config", {}),
        )
        # Checked with the file (once the record checked the types), not when the
        # app is written: a refusal then would come after the models were deployed.
        validate_policy(rec.policy, rec.policy_config)
    except BadInput as exc:
        raise BadInput(f"{where}: {exc}") from None
    return DesiredApp(rec, tuple(models), tuple(dict.fromkeys(keys)))


# -- pipelines -------------------------------------------------------------------------


def _pipeline(where: str, raw: object) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A pipeline entry as its record's ``to_dict()`` (every stage and edge field
    filled in, so that it compares with what the store holds), and its API keys."""
    where = _table(where, raw, PIPELINE_FIELDS, ("name", "input_type", "stages"))
    assert isinstance(raw, Mapping)
    data = {"edges": [], "slo_micros": 100_000, "default_output": "None", **raw}
    try:
        keys = validate_api_keys(data.pop("api_keys", None))
        out: dict[str, Any] = PipelineRecord.from_dict(data).to_dict()
    except BadInput as exc:
        raise BadInput(f"{where}: {exc}") from None
    return out, tuple(dict.fromkeys(keys))
