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

from clipper_core.clipper_api import input_key, parse_predict
from clipper_core.dataplane.application import Outcome
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

    async def update(request: Request, params: dict[str, str]) -> Response:
        app = dataplane.app(params["app"])
        # The predict route's API-key check, where the server has one.
        api_keys = getattr(server, "api_keys", None)
        if api_keys is not None:
            api_keys.check(app.name, request.headers)
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
