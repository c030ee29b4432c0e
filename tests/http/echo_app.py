"""The echo routes the HTTP server's tests serve: each answers with what it got."""

from __future__ import annotations

from clipper_core.http import Request, Response, Router, json_response


async def echo(request: Request, params: dict[str, str]) -> Response:
    return json_response(
        {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "params": params,
            "body": request.body.decode("latin-1"),
            "version": request.http_version,
            "keep_alive": request.keep_alive,
            "headers": request.headers,
        }
    )


def make_router() -> Router:
    router = Router()
    router.add("POST", "/{app}/predict", echo)
    router.add("GET", "/echo", echo)
    router.add("POST", "/echo", echo)
    router.add("GET", "/v2/models/{model}/versions/{version}/infer", echo)
    return router
