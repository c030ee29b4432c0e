"""The query port's feedback route, ``POST /<app>/update``, and the reply fields that
say which models answered.

An update is ``{"uid": int, "input": X, "label": y}`` (Clipper's shape; ``uid``
defaults to 0, the app-wide state).  ``X`` follows the app's input type as in
``/predict``; the label is a number, a string, a boolean or an array of numbers.
The reply is ``{"success": true, "uid": uid, "models": ["name:version", ...]}``,
the model versions whose outputs were scored; it is sent once the new policy state
is stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from clipper_core.admission import client_key
from clipper_core.clipper_api import check_json_depth, input_key, parse_predict
from clipper_core.dataplane.application import Application, Outcome
from clipper_core.errors import BadInput
from clipper_core.http import Request, Response, Router, json_response

if TYPE_CHECKING:
    from clipper_core.server import ClipperServer

__all__ = ["install", "parse_label", "reply_fields"]


def reply_fields(outcome: Outcome) -> dict[str, Any] | None:
    """The reply keys beyond Clipper's: ``model`` (the version whose output is the
    answer), and for policies that may query several models ``models`` (those that
    answered), ``confidence`` and ``missing`` (those that did not answer in time)."""
    fields: dict[str, Any] = {}
    if outcome.model is not None:
        fields["model"] = outcome.model
    if outcome.models is not None:
        fields["models"] = outcome.models
    if outcome.confidence is not None:
        fields["confidence"] = round(outcome.confidence, 6)
    if outcome.missing:
        fields["missing"] = outcome.missing
    return fields or None


def parse_label(body: dict[str, Any]) -> Any:
    """The ``label`` of an update body.

    Raises:
        BadInput: Missing, null, or not a number, string, boolean or array of numbers.
    """
    if "label" not in body or body["label"] is None:
        raise BadInput("update must have a 'label' (the true output for 'input')")
    label = body["label"]
    if isinstance(label, bool | int | float | str):
        return label
    if isinstance(label, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in label
    ):
        return label
    raise BadInput(
        "label must be a number, a string, a boolean or an array of numbers,"
        f" got {orjson.dumps(label).decode()[:80]}"
    )


def install(router: Router, server: ClipperServer) -> None:
    """Add ``POST /<app>/update`` to the query port's routes."""
    dataplane = server.dataplane

    limiter = server.client_limiter
    api_keys = server.api_keys
    max_depth = server.config.max_json_depth

    async def update(request: Request, params: dict[str, str]) -> Response:
        # The same gates as /predict: per-client limit, API keys, JSON depth.
        app = dataplane.app(params["app"])
        api_keys.check(app.name, request.headers)
        client = (
            client_key(request.headers, request.remote, api_keys.known) if limiter.enabled else ""
        )
        limiter.acquire(client)
        try:
            return await _update(request, app)
        finally:
            limiter.release(client)

    async def _update(request: Request, app: Application) -> Response:
        check_json_depth(request.body, max_depth)
        query = parse_predict(request.body, app.input_type)
        if query.batch:
            raise BadInput("an update carries one 'input' and its 'label', not 'input_batch'")
        body = orjson.loads(request.body)  # valid: parse_predict read it
        label = parse_label(body)
        x = query.inputs[0]
        result = await server.selection.get(app.name).update(
            dataplane, app, query.uid, x, input_key(x, app.input_type), label
        )
        return json_response(result)

    router.add("POST", "/{app}/update", update)
