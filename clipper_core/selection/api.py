"""The query port's feedback route, ``POST /<app>/update``.

An update is ``{"uid": int, "input": X, "label": y}`` (Clipper's shape; ``uid``
defaults to 0, the app-wide state).  ``X`` follows the app's input type as in
``/predict``; the label is a number, a string, a boolean or an array of numbers.
The reply is ``{"success": true, "uid": uid, "state_uid": u, "models":
["name:version", ...]}``: the model versions whose outputs were scored, and ``u``
the uid whose state learned -- 0 when the input was queried without a uid (as
Clipper's ``/predict`` is) and not with this one; it is sent once the new policy
state is stored.  A label that cannot be compared with one of those outputs (the rules:
:mod:`clipper_core.selection.losses`) is answered 400, naming both types, and
teaches the policy nothing; so is one that no chosen model gave an output for
(503 ``no_model``, naming each model and why).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from clipper_core.admission import QueryGate
from clipper_core.clipper_api import input_key, parse_predict
from clipper_core.errors import BadInput, NotFound
from clipper_core.http import Request, Response, Router, json_response
from clipper_core.http.same_origin import cross_site_refusal

if TYPE_CHECKING:
    from clipper_core.dataplane import Application, QueryView

__all__ = ["install", "parse_label"]


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


def install(router: Router, dataplane: QueryView, gate: QueryGate) -> None:
    """Add ``POST /<app>/update`` to the query port's routes.

    Args:
        router: The query port's routes.
        dataplane: Where the app is found.
        gate: The checks before any work, in the same order as ``/predict``.
    """

    async def update(request: Request, params: dict[str, str]) -> Response:
        refusal = cross_site_refusal(request, "a feedback (/update)")
        if refusal is not None:
            return refusal
        # The same gates as /predict, in the same order: per-client limit (429),
        # then the app's API keys (401/403), then the JSON depth (400).
        client = gate.admit(request.headers, request.remote)
        try:
            app = dataplane.app(params["app"])
            gate.check(app.name, request.headers)
            return await _update(request, app)
        finally:
            gate.release(client)

    async def _update(request: Request, app: Application) -> Response:
        gate.check_body(request.body)
        query = parse_predict(request.body, app.input_type)
        if query.batch:
            raise BadInput("an update carries one 'input' and its 'label', not 'input_batch'")
        body = orjson.loads(request.body)  # valid: parse_predict read it
        label = parse_label(body)
        x = query.inputs[0]
        selector = app.selector
        if selector is None:
            raise NotFound(f"application {app.name!r} has no selection policy to learn")
        result = await selector.update(
            dataplane, app, query.uid, x, input_key(x, app.input_type), label
        )
        return json_response(result)

    router.add("POST", "/{app}/update", update)
