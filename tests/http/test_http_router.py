"""Router matching and the wire encoding of responses (no sockets)."""

from __future__ import annotations

import orjson
import pytest

from clipper_core.http import Request, Response, Router, encode_response, error_response
from clipper_core.http import json_response as json_resp


async def h_literal(request: Request, params: dict[str, str]) -> Response:
    return Response()


async def h_param(request: Request, params: dict[str, str]) -> Response:
    return Response()


async def h_other(request: Request, params: dict[str, str]) -> Response:
    return Response()


def test_literal_and_param_routes() -> None:
    r = Router()
    r.add("POST", "/{app}/predict", h_param)
    r.add("GET", "/admin/{op}", h_other)
    r.add("POST", "/admin/ping", h_literal)
    r.add("POST", "/v2/models/{model}/versions/{version}/infer", h_other)
    assert r.resolve("POST", "/myapp/predict") == (h_param, {"app": "myapp"})
    assert r.resolve("POST", "/admin/ping") == (h_literal, {})
    assert r.resolve("GET", "/admin/ping") == (h_other, {"op": "ping"})
    assert r.resolve("POST", "/v2/models/m/versions/3/infer") == (
        h_other,
        {"model": "m", "version": "3"},
    )


def test_repeated_matches_are_remembered_and_still_right() -> None:
    r = Router()
    r.add("POST", "/{app}/predict", h_param)
    first = r.resolve("POST", "/a/predict")
    assert first == (h_param, {"app": "a"})
    assert isinstance(first, tuple)
    first[1]["app"] = "changed by a handler"
    assert r.resolve("POST", "/a/predict") == (h_param, {"app": "a"})
    assert r.resolve("POST", "/b/predict") == (h_param, {"app": "b"})
    # A route added later takes precedence over what was remembered.
    r.add("POST", "/a/predict", h_literal)
    assert r.resolve("POST", "/a/predict") == (h_literal, {})
    # Many distinct paths: the memory stays bounded and answers stay right.
    for i in range(3000):
        assert r.resolve("POST", f"/app{i}/predict") == (h_param, {"app": f"app{i}"})
    assert len(r._matched) <= 1024
    assert isinstance(r.resolve("GET", "/a/predict"), Response)  # 405, never remembered


def test_literal_segments_take_precedence() -> None:
    r = Router()
    r.add("POST", "/{app}/predict", h_param)
    r.add("POST", "/admin/{op}", h_other)
    r.add("POST", "/admin/predict", h_literal)
    assert r.resolve("POST", "/admin/predict") == (h_literal, {})
    assert r.resolve("POST", "/admin/add_app") == (h_other, {"op": "add_app"})
    assert r.resolve("POST", "/other/predict") == (h_param, {"app": "other"})


def test_backtracks_to_a_parameter_route_that_takes_the_method() -> None:
    r = Router()
    r.add("GET", "/admin/ping", h_literal)
    r.add("POST", "/{app}/{action}", h_param)
    assert r.resolve("POST", "/admin/ping") == (h_param, {"app": "admin", "action": "ping"})


def test_same_position_parameters_with_different_names() -> None:
    r = Router()
    r.add("GET", "/v2/models/{model}", h_param)
    r.add("POST", "/v2/models/{name}", h_other)
    assert r.resolve("GET", "/v2/models/a") == (h_param, {"model": "a"})
    assert r.resolve("POST", "/v2/models/a") == (h_other, {"name": "a"})


def _error(resp: object) -> tuple[int, dict[str, str]]:
    assert isinstance(resp, Response)
    return resp.status, orjson.loads(resp.body)


def test_404_and_405() -> None:
    r = Router()
    r.add("POST", "/{app}/predict", h_param)
    r.add("GET", "/metrics", h_literal)
    assert _error(r.resolve("GET", "/x")) == (
        404,
        {"error": "not_found", "cause": "no route for GET /x"},
    )
    status, body = _error(r.resolve("GET", "/a/predict"))
    assert status == 405 and body["error"] == "method_not_allowed"
    resp = r.resolve("DELETE", "/metrics")
    assert isinstance(resp, Response)
    assert resp.headers == {"Allow": "GET, HEAD"}
    # A parameter never matches an empty segment, and trailing slashes are distinct.
    assert _error(r.resolve("POST", "//predict"))[0] == 404
    assert _error(r.resolve("POST", "/a/predict/"))[0] == 404


def test_head_falls_back_to_get() -> None:
    r = Router()
    r.add("GET", "/v2/health/live", h_literal)
    r.add("GET", "/v2/models/{m}", h_param)
    assert r.resolve("HEAD", "/v2/health/live") == (h_literal, {})
    assert r.resolve("HEAD", "/v2/models/x") == (h_param, {"m": "x"})


def test_root_route() -> None:
    r = Router()
    r.add("GET", "/", h_literal)
    assert r.resolve("GET", "/") == (h_literal, {})
    assert _error(r.resolve("GET", "/x"))[0] == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("FETCH", "/x"),
        ("GET", "x"),
        ("GET", "/a{b}"),
        ("GET", "/{1x}"),
        ("GET", "/{a}/{a}"),
    ],
)
def test_bad_routes_are_rejected(method: str, path: str) -> None:
    with pytest.raises(ValueError):
        Router().add(method, path, h_literal)


def test_duplicate_route_is_rejected() -> None:
    r = Router()
    r.add("get", "/{a}", h_literal)
    with pytest.raises(ValueError, match="already registered"):
        r.add("GET", "/{b}", h_other)
    r.add("POST", "/{b}", h_other)
    assert sorted(r.routes()) == [("GET", "/{a}"), ("POST", "/{b}")]


# -- encode_response ---------------------------------------------------------------


def test_encode_keep_alive_and_close() -> None:
    data = encode_response(json_resp({"a": 1}), keep_alive=True)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"Content-Type: application/json" in lines
    assert b"Content-Length: 7" in lines
    assert not any(line.startswith(b"Connection") for line in lines)
    assert body == b'{"a":1}'
    assert b"Connection: close\r\n" in encode_response(Response(), keep_alive=False)
    assert b"Connection: keep-alive\r\n" in encode_response(
        Response(), keep_alive=True, http_version="1.0"
    )


def test_encode_head_204_and_unknown_status() -> None:
    data = encode_response(Response(200, b"abc"), keep_alive=True, head=True)
    assert data.endswith(b"Content-Length: 3\r\n\r\n")
    data = encode_response(Response(204, b"ignored"), keep_alive=True)
    assert b"Content-Length" not in data and not data.endswith(b"ignored")
    assert encode_response(Response(599), True).startswith(b"HTTP/1.1 599 Unknown\r\n")


def test_encode_rejects_header_injection() -> None:
    with pytest.raises(ValueError):
        encode_response(Response(headers={"X": "a\nb"}), True)
    with pytest.raises(ValueError):
        encode_response(Response(content_type="text/plain\r\nX: y"), True)


def test_response_helpers() -> None:
    import numpy as np

    resp = json_resp({"x": np.arange(3, dtype=np.int32)}, status=201)
    assert resp.status == 201 and orjson.loads(resp.body) == {"x": [0, 1, 2]}
    resp = error_response(400, "bad_input", "why")
    assert orjson.loads(resp.body) == {"error": "bad_input", "cause": "why"}
    assert Response(body="é").body == "é".encode()
    req = Request("POST", "/a", {}, {}, b'{"k": 1}')
    assert req.json() == {"k": 1}
    assert (req.http_version, req.keep_alive) == ("1.1", True)
