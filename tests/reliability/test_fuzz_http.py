"""Bad input, fuzzed with hypothesis over real sockets against a real ``clipper
serve`` process: malformed request lines and headers, chunked bodies, extreme and
negative lengths, hostile JSON (wrong types, deep nesting, NaN, huge arrays), and
the OIP binary-tensor header.

For every example the server must answer with an HTTP response whose status is
below 500 and, for an error, a JSON body with an ``"error"``; or -- only when the
bytes sent are an incomplete request, which it rightly waits to complete -- close
the connection once the client half-closes.  It must never hang (every read is
bounded) and never crash (it is checked alive after each category).

Examples per category: ``CLIPPER_FUZZ_EXAMPLES`` (default 40: the whole file
takes 4-15 s, and this is what ``make test`` and CI run).  The ``long`` variants
run 25 times as many (about 2.5 min) and only when selected; either of::

    pytest -m long tests/reliability/test_fuzz_http.py
    CLIPPER_FUZZ_EXAMPLES=2000 pytest --timeout 3600 tests/reliability/test_fuzz_http.py
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.conftest import ServeProcess, http
from tests.server import models as server_models

EXAMPLES = int(os.environ.get("CLIPPER_FUZZ_EXAMPLES", "40"))
SLOW_FACTOR = 25
#: How long a request may go unanswered before the client half-closes (a request
#: the server is still waiting to complete); then the close must come within READ.
QUIET = 1.0
READ = 15.0
MAX_BODY = 256 * 1024

APPS = {"fz": "doubles", "fi": "ints", "fs": "strings", "fb": "bytes"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    srv = ServeProcess(tmp_path_factory.mktemp("fuzz") / "state", "--max-body-size", str(MAX_BODY))
    try:
        conn = srv.connection()
        for app, input_type in APPS.items():
            conn.register_application(app, input_type, "-1", 2_000_000)
        conn.deploy_pickled("summer", 1, "doubles", server_models.make_sum(), batch_size=64)
        conn.link_model_to_app("fz", "summer")
        yield srv
    finally:
        srv.reap()


# -- the raw client -----------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def _parse(data: bytes, head_request: bool) -> tuple[Answer | None, bool]:
    """(the first response in ``data``, whether it is complete)."""
    if b"\r\n\r\n" not in data:
        return None, False
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", f"not an HTTP/1.1 status line: {lines[0]!r}"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    code = int(status)
    if code == 100:  # interim: the final answer follows
        return _parse(rest, head_request)
    length = 0 if head_request else int(headers.get("content-length", "0"))
    if len(rest) < length:
        return None, False
    return Answer(code, headers, rest[:length]), True


def exchange(port: int, data: bytes, head_request: bool = False) -> Answer | None:
    """Send ``data`` on a fresh connection; the first response, or None when the
    server closed without one after we half-closed (an incomplete request)."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # it may answer (413, 431) and stop reading before we are done
        received = b""
        sock.settimeout(QUIET)
        half_closed = False
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                assert not half_closed, f"no answer and no close within {READ} s: a hang"
                # Nothing yet: the request may be incomplete.  Say we are done.
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(READ)
                half_closed = True
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                answer, complete = _parse(received, head_request)
                assert received == b"" or complete, f"truncated response: {received[:300]!r}"
                return answer
            received += chunk
            answer, complete = _parse(received, head_request)
            if complete:
                return answer


def check(answer: Answer | None) -> None:
    if answer is None:
        return  # an incomplete request, closed cleanly on the client's half-close
    # 501 is the one 5xx a client can earn: a transfer coding we do not implement
    # (RFC 9112 6.1; the fuzz picks "Transfer-Encoding: 0" now and then).
    not_implemented = answer.status == 501 and b'"not_implemented"' in answer.body
    assert answer.status < 500 or not_implemented, (answer.status, answer.body[:500])
    if answer.status >= 400:
        assert answer.headers.get("content-type", "").startswith("application/json"), answer
        body = json.loads(answer.body)
        assert isinstance(body, dict) and body.get("error"), body


def alive(srv: ServeProcess) -> None:
    assert srv.proc.poll() is None, f"the server died:\n{srv.log_tail()}"
    status, _, body = http("GET", f"{srv.query_url}/health", timeout=READ)
    assert status == 200 and body == {"status": "ok"}


def run_fuzz(strategy: st.SearchStrategy[bytes], send: Callable[[bytes], None], n: int) -> None:
    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(strategy)
    def one(data: bytes) -> None:
        send(data)

    one()


# -- strategies -----------------------------------------------------------------------

_tokens = st.sampled_from(
    ["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "BREW", "", "G\x00T", "get"]
)
_targets = st.one_of(
    st.sampled_from(
        [
            "/",
            "/fz/predict",
            "/metrics",
            "/health",
            "*",
            "http://h/fz/predict?x=1",
            "/%zz/predict",
            "/fz/predict#frag",
            "/fz//predict",
            "/../../etc/passwd",
            "/v2/models/summer/infer",
            "/" + "a" * 70_000,
        ]
    ),
    st.text(min_size=0, max_size=200).map(lambda s: "/" + s),
    st.binary(max_size=100).map(lambda b: "/" + b.decode("latin-1")),
)
_versions = st.sampled_from(
    ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.x", "", "HTTP/1.1 extra", "hTTP/1.1", "HTTP/9"]
)


@st.composite
def request_lines(draw: st.DrawFn) -> bytes:
    line = f"{draw(_tokens)} {draw(_targets)} {draw(_versions)}"
    sep = draw(st.sampled_from(["\r\n", "\n"]))
    return (line + sep + "Host: x" + sep + sep).encode("utf-8", "surrogatepass")


_header_names = st.one_of(
    st.sampled_from(
        [
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "Expect",
            "Connection",
            "Content-Type",
            "X-Api-Key",
            "Authorization",
            "Clipper-Deadline-Ms",
            "Inference-Header-Content-Length",
            "Upgrade",
            "",
            " Content-Length",
            "Content Length",
            "X\x00Y",
        ]
    ),
    st.text(max_size=30),
)
_header_values = st.one_of(
    st.sampled_from(
        [
            "0",
            "-1",
            "5",
            "abc",
            "99999999999999999999999",
            "chunked",
            "gzip, chunked",
            "chunked, identity",
            "100-continue",
            "close",
            "keep-alive",
            "Bearer ",
            "Bearer x",
            "1e9",
            "NaN",
            "\x00",
            "a" * 70_000,
        ]
    ),
    st.text(max_size=60),
)


@st.composite
def header_sections(draw: st.DrawFn) -> bytes:
    headers = draw(st.lists(st.tuples(_header_names, _header_values), max_size=8))
    body = draw(st.sampled_from([b"", b'{"input": [1.0, 2.0]}', b"{", b"0\r\n\r\n"]))
    lines = ["POST /fz/predict HTTP/1.1", "Host: x"]
    lines += [f"{name}: {value}" for name, value in headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogatepass")
    return head + body


_chunk_sizes = st.one_of(
    st.integers(0, 64).map(lambda n: f"{n:x}"),
    st.sampled_from(["-1", "fffffffffffffffffff", "zz", "", " 5", "5 ", "5;ext=1", "0x5", "+5"]),
)


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    payload = json.dumps({"input": [1.0, 2.0, 3.0]}).encode()
    out = [b"POST /fz/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"]
    if draw(st.booleans()):
        out.append(f"Content-Length: {draw(st.integers(-5, 100))}\r\n".encode())
    out.append(b"\r\n")
    pos = 0
    for _ in range(draw(st.integers(0, 5))):
        size = draw(_chunk_sizes)
        n = draw(st.integers(0, 12))
        data = payload[pos : pos + n]
        pos += n
        end = draw(st.sampled_from([b"\r\n", b"\n", b"", b"XX"]))
        out.append(size.encode() + b"\r\n" + data + end)
    out.append(draw(st.sampled_from([b"0\r\n\r\n", b"0\r\nTrailer: x\r\n\r\n", b"0\r\n", b""])))
    return b"".join(out)


_lengths = st.sampled_from(
    [
        "-1",
        "-0",
        "0x10",
        "1e3",
        "18446744073709551616",
        "99999999999",
        str(MAX_BODY + 1),
        "+12",
        "",
        "1,1",
        "2, 3",
        "12 12",
    ]
)


@st.composite
def extreme_lengths(draw: st.DrawFn) -> bytes:
    length = draw(_lengths)
    second = draw(st.sampled_from(["", "Content-Length: 3\r\n", "Transfer-Encoding: chunked\r\n"]))
    body = draw(st.sampled_from([b"", b'{"input": [1.0]}', b"x" * 100]))
    return (
        f"POST /fz/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{second}\r\n"
    ).encode() + body


_json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
_json_values = st.recursive(
    _json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


def _dumps(value: object) -> str:
    return json.dumps(value, allow_nan=True)  # NaN / Infinity tokens: not JSON


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        text = _dumps(draw(_json_values))
    elif kind == 1:
        text = _dumps({draw(st.sampled_from(["input", "input_batch"])): draw(_json_values)})
    elif kind == 2:
        numbers = draw(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=20))
        text = _dumps({"input": numbers, "version": draw(_json_leaves)})
    elif kind == 3:
        depth = draw(st.integers(1, 120_000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        text = '{"input": ' + opener * depth + "1" + closer * depth + "}"
    elif kind == 4:
        n = draw(st.integers(0, 3_000_000))
        text = '{"input": [' + "1," * n + "1]}"
    else:
        rows = draw(st.integers(1, 20_000))
        text = '{"input_batch": [' + ",".join(["[1, 2.5]"] * rows) + "]}"
    app = draw(st.sampled_from(sorted(APPS)))
    body = text.encode()
    return (
        f"POST /{app}/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@st.composite
def oip_binary(draw: st.DrawFn) -> bytes:
    header = {
        "inputs": [
            {
                "name": draw(st.sampled_from(["input", "x", ""])),
                "shape": draw(st.lists(st.integers(-3, 5), max_size=3)),
                "datatype": draw(st.sampled_from(["FP64", "FP32", "INT32", "BYTES", "BOOL", "X"])),
                "parameters": {"binary_data_size": draw(st.integers(-10, 64))},
            }
        ]
    }
    if draw(st.booleans()):
        header["outputs"] = [{"name": "output", "parameters": {"binary_data": True}}]
    head = json.dumps(header).encode()
    tensor = draw(
        st.one_of(
            st.binary(max_size=64),
            st.lists(st.floats(allow_nan=True), max_size=8).map(
                lambda xs: struct.pack(f"<{len(xs)}d", *xs)
            ),
        )
    )
    body = head + tensor
    declared = draw(
        st.one_of(
            st.just(str(len(head))),
            st.integers(-5, len(body) + 5).map(str),
            st.sampled_from(["", "abc", "1e3", "99999999999999999999"]),
        )
    )
    version = draw(st.sampled_from(["", "/versions/1", "/versions/9"]))
    return (
        f"POST /v2/models/summer{version}/infer HTTP/1.1\r\nHost: x\r\n"
        f"Inference-Header-Content-Length: {declared}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


CATEGORIES: dict[str, st.SearchStrategy[bytes]] = {
    "request_line": request_lines(),
    "headers": header_sections(),
    "chunked": chunked_bodies(),
    "lengths": extreme_lengths(),
    "json": json_bodies(),
}
if Path(__file__).resolve().parents[2].joinpath("clipper_core", "oip").is_dir():
    CATEGORIES["oip_binary"] = oip_binary()


def _fuzz(server: ServeProcess, category: str, n: int) -> None:
    port = server.query_port

    def send(data: bytes) -> None:
        head_request = data.startswith(b"HEAD ")
        check(exchange(port, data, head_request))

    run_fuzz(CATEGORIES[category], send, n)
    alive(server)


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_fuzz(server: ServeProcess, category: str) -> None:
    _fuzz(server, category, EXAMPLES)


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_fuzz_long(server: ServeProcess, category: str) -> None:
    _fuzz(server, category, EXAMPLES * SLOW_FACTOR)


def test_the_server_still_serves_after_the_fuzzing(server: ServeProcess) -> None:
    status, _, body = http("POST", f"{server.query_url}/fz/predict", {"input": [1.5, 2.5]})
    assert status == 200 and body["output"] == 4.0 and not body["default"]
    assert not math.isnan(body["output"])
