"""The OpenAPI document's building blocks: schema helpers, the shared schemas
(errors, input types) and the error responses both ports answer.

Limits come from the code that enforces them (``clipper_api.MAX_BATCH``,
``auth.MIN_API_KEY_LENGTH``...), so that the document cannot drift from them.
"""

from __future__ import annotations

from typing import Any

from clipper_core.admission import MAX_DEADLINE_SECONDS
from clipper_core.auth import MIN_API_KEY_LENGTH
from clipper_core.clipper_api import INPUT_TYPES, MAX_INPUT_ELEMENTS

Schema = dict[str, Any]

#: Every spelling of an input type that ``validate_input_type`` accepts (Clipper's
#: aliases; the server also ignores case and surrounding spaces).
INPUT_TYPE_NAMES = (
    *INPUT_TYPES,
    "integers",
    "int",
    "float",
    "double",
    "string",
    "str",
    "byte",
)

JSON = "application/json"


def ref(name: str) -> Schema:
    """A reference to ``#/components/schemas/<name>``."""
    return {"$ref": f"#/components/schemas/{name}"}


def obj(
    properties: dict[str, Schema],
    required: tuple[str, ...] = (),
    *,
    extra: bool = False,
    description: str | None = None,
) -> Schema:
    """A JSON object schema (``extra``: whether other keys may appear)."""
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    if not extra:
        out["additionalProperties"] = False
    if description:
        out["description"] = description
    return out


def arr(items: Schema, **limits: Any) -> Schema:
    """A JSON array of ``items`` (``limits``: minItems, maxItems...)."""
    return {"type": "array", "items": items, **limits}


def text(description: str | None = None, **limits: Any) -> Schema:
    """A string schema."""
    out: Schema = {"type": "string", **limits}
    if description:
        out["description"] = description
    return out


def json_content(schema: Schema, example: Any = None) -> dict[str, Any]:
    """A ``content`` map of one ``application/json`` media type."""
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {JSON: media}


def reply(description: str, schema: Schema, example: Any = None) -> dict[str, Any]:
    """A 200 response object with a JSON body."""
    return {"description": description, "content": json_content(schema, example)}


#: What an application, model, version, pipeline or stage name may be
#: (``store.records.check_name``): it appears in URL paths and in
#: ``name:version:replica`` ids.
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
NAME = text(pattern=NAME_PATTERN)
#: A model version: a name, or an integer (Clipper's clients send numbers; the
#: server keeps the decimal form).
VERSION = {
    "anyOf": [NAME, {"type": "integer", "minimum": 0}],
    "description": "A model version (kept as a string).",
}

SCHEMAS: dict[str, Schema] = {
    "Error": obj(
        {
            "error": text("The error's kind (bad_input, not_found, unauthorized...)."),
            "cause": text("What was wrong, in words."),
        },
        ("error", "cause"),
        description="Every error of the management port and of Clipper's query routes.",
    ),
    "OipError": obj(
        {"error": text("What was wrong, in words."), "cause": text()},
        ("error",),
        description="An Open Inference Protocol error.  Errors found before the route"
        " (a malformed request, a body over the size limit) have Clipper's shape"
        " (``error`` + ``cause``), which this schema also admits.",
    ),
    "InputType": {
        "type": "string",
        "enum": list(INPUT_TYPE_NAMES),
        "description": "An application's or model's input type; Clipper's aliases are"
        " accepted (case-insensitive) and stored under the canonical name.",
    },
    "ApiKey": text(
        "An application API key: printable ASCII, no spaces.",
        minLength=MIN_API_KEY_LENGTH,
        pattern="^[!-~]+$",
    ),
    "NumericInput": arr(
        {"type": "number"},
        minItems=1,
        maxItems=MAX_INPUT_ELEMENTS,
        description="One input of an ``ints``, ``floats`` or ``doubles`` app: a flat"
        " array of numbers (integral and in the int32 range for ``ints``).",
    ),
    "Input": {
        "anyOf": [
            ref("NumericInput"),
            text("One input of a ``strings`` app, or base64 for a ``bytes`` app."),
        ],
    },
}

#: The ``Clipper-Deadline-Ms`` header of the query routes.
DEADLINE_PARAMETER: Schema = {
    "name": "Clipper-Deadline-Ms",
    "in": "header",
    "required": False,
    "description": "This query's deadline in milliseconds from now; the application's"
    " latency objective still applies when it is tighter.",
    "schema": {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": MAX_DEADLINE_SECONDS * 1000,
    },
}

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds after which a retry may succeed.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_WWW_AUTHENTICATE = {
    "WWW-Authenticate": {"description": "Bearer realm.", "schema": {"type": "string"}}
}

_ERRORS: dict[int, tuple[str, dict[str, Any] | None]] = {
    400: ("The request is malformed; ``cause`` names the field.", None),
    401: ("No valid credentials came with the request.", _WWW_AUTHENTICATE),
    403: (
        "The credentials do not grant this request (an API key of another"
        " application; on the management port, a foreign Host or Origin).",
        None,
    ),
    404: ("Unknown application, model, version or route.", None),
    405: ("The path exists for other methods (``Allow`` names them).", None),
    408: ("The request arrived slower than the minimum rate.", None),
    413: ("The body is larger than the port's limit.", None),
    415: ("A management call whose body is not ``application/json``.", None),
    429: ("The client's concurrency or rate limit is exceeded.", _RETRY_AFTER),
    431: ("The request line and headers are too large.", None),
    500: ("The model raised, or the server failed (``cause`` says which).", None),
    503: (
        "Overloaded, no live replica, shutting down, or (management) the state"
        " store unreachable or locked.",
        _RETRY_AFTER,
    ),
    504: ("The deadline or the model's batch timeout passed.", None),
}


def error_responses() -> dict[str, Any]:
    """``components.responses``: one per error status, in both error shapes."""
    out: dict[str, Any] = {}
    for status, (description, headers) in _ERRORS.items():
        for prefix, schema in (("", "Error"), ("Oip", "OipError")):
            response: dict[str, Any] = {
                "description": description,
                "content": json_content(ref(schema)),
            }
            if headers:
                response["headers"] = headers
            out[f"{prefix}{status}"] = response
    return out


def errors(*statuses: int, oip: bool = False) -> dict[str, Any]:
    """References to the error responses of ``statuses``."""
    prefix = "Oip" if oip else ""
    return {str(s): {"$ref": f"#/components/responses/{prefix}{s}"} for s in statuses}


__all__ = [
    "DEADLINE_PARAMETER",
    "INPUT_TYPE_NAMES",
    "JSON",
    "NAME",
    "NAME_PATTERN",
    "SCHEMAS",
    "VERSION",
    "Schema",
    "arr",
    "error_responses",
    "errors",
    "json_content",
    "obj",
    "ref",
    "reply",
    "text",
]
