"""Raw HTTP calls and their check against the OpenAPI document's responses."""

from __future__ import annotations

import http.client
import json
from typing import Any

from jsonschema import Draft202012Validator

Reply = tuple[int, str, bytes]


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> Reply:
    """One request on a fresh connection: (status, media type, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        sent = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        media = (resp.getheader("Content-Type") or "").partition(";")[0].strip()
        return resp.status, media, resp.read()
    finally:
        conn.close()


def _resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def check_reply(doc: dict[str, Any], route: tuple[str, str], reply: Reply) -> Any:
    """Assert that ``reply`` is documented for ``route`` (method, path template):
    its status, its media type, and for JSON its body against the schema.
    Returns the parsed JSON body (None for other media types)."""
    method, path = route
    status, media, body = reply
    operation = doc["paths"][path][method.lower()]
    documented = operation["responses"].get(str(status))
    assert documented is not None, f"{method} {path}: status {status} is not documented: {body!r}"
    content = _resolve(doc, documented).get("content", {})
    assert media in content, (
        f"{method} {path} {status}: media type {media!r} not in {list(content)}"
    )
    if media != "application/json":
        return None
    value = json.loads(body)
    schema = {**content[media]["schema"], "components": doc["components"]}
    errors = sorted(Draft202012Validator(schema).iter_errors(value), key=str)
    assert not errors, f"{method} {path} {status}: {value!r} does not match: {errors[0]}"
    return value
