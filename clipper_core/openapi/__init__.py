"""The OpenAPI 3.1 document of both REST APIs: the management port
(:mod:`clipper_core.admin_api`) and the query port (Clipper's REST API and the
Open Inference Protocol over HTTP).

Built from code (:mod:`.management`, :mod:`.query`), with the limits the
validators enforce; ``python -m clipper_core.openapi`` writes the copy the docs
link (``docs/reference/openapi.json``), and a test keeps the two equal.  Each
port serves it too: ``GET /openapi.json`` on the query port, ``GET
/admin/openapi.json`` (with the management token) on the management port.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson

from clipper_core._version import __version__
from clipper_core.http import Request, Response
from clipper_core.openapi import management, query, records
from clipper_core.openapi.schemas import SCHEMAS, error_responses

__all__ = [
    "MANAGEMENT_DOCUMENT_PATH",
    "QUERY_DOCUMENT_PATH",
    "document",
    "document_bytes",
    "document_route",
    "port_paths",
]

#: Where the query port serves the document.
QUERY_DOCUMENT_PATH = "/openapi.json"
#: Where the management port serves it (the management token applies).
MANAGEMENT_DOCUMENT_PATH = "/admin/openapi.json"

_QUERY_SERVER = {"url": "http://127.0.0.1:1337", "description": "query port"}
_MANAGEMENT_SERVER = {"url": "http://127.0.0.1:1338", "description": "management port"}


def port_paths() -> dict[str, dict[str, Any]]:
    """Each port (``"query"``, ``"management"``) to its path items."""
    return {
        "query": query.paths(QUERY_DOCUMENT_PATH),
        "management": management.paths(MANAGEMENT_DOCUMENT_PATH),
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh dict).  Each path item names its port in
    ``servers`` (default ports; the document's top-level ``servers`` lists both)."""
    paths: dict[str, Any] = {}
    for port, items in port_paths().items():
        server = _QUERY_SERVER if port == "query" else _MANAGEMENT_SERVER
        for path, item in items.items():
            paths[path] = {"servers": [server], **item}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "clipper_core REST APIs",
            "version": __version__,
            "description": "The query port (Clipper's REST API, the Open Inference"
            " Protocol over HTTP) and the management port (Clipper's admin API).",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [_QUERY_SERVER, _MANAGEMENT_SERVER],
        "tags": [
            {"name": "query", "description": "The query port (default 1337)."},
            {"name": "management", "description": "The management port (default 1338)."},
        ],
        "paths": paths,
        "components": {
            "schemas": {**SCHEMAS, **records.SCHEMAS, **query.SCHEMAS},
            "responses": error_responses(),
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The management token (``CLIPPER_ADMIN_TOKEN``, or the"
                    " one the server wrote to ``<state_dir>/admin_token``).",
                },
                "appApiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Api-Key",
                    "description": "An API key of the application (when it has any).",
                },
                "appBearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An application API key sent as a Bearer token.",
                },
                "replicaToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A model version's bundle token (get_replica_token).",
                },
                "registerToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A model version's registration token"
                    " (get_replica_token's register_token).",
                },
            },
        },
    }


@cache
def document_bytes() -> bytes:
    """The document as indented JSON (the file in ``docs/reference``)."""
    return orjson.dumps(document(), option=orjson.OPT_INDENT_2) + b"\n"


def document_route(request: Request, params: dict[str, str]) -> Response:
    """A route handler that answers the document."""
    return Response(200, document_bytes(), "application/json")
