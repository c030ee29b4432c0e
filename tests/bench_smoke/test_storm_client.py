"""The storm benchmark's lean client, against an in-process HTTP server."""

from __future__ import annotations

import time

import pytest
import uvloop

from bench.storm import main, summarize
from bench.storm_client import closed_loop, open_loop
from clipper_core.http import HttpServer, Request, Response, Router, error_response, json_response


def test_open_and_closed_loop_record_every_answer() -> None:
    count = 0

    def predict(request: Request, params: dict[str, str]) -> Response:
        nonlocal count
        count += 1
        if count % 2:
            return error_response(503, "overloaded", "busy", {"Retry-After": "1"})
        return json_response({"output": 1.0, "default": params["app"] == "dflt"})

    async def body() -> tuple[object, object, float]:
        router = Router()
        router.add("POST", "/{app}/predict", predict)
        server = HttpServer(router)
        await server.start()
        try:
            t0 = time.perf_counter()  # the clients' clock
            opened = await open_loop(server.port, "a", 200.0, 0.5, connections=4)
            closed = await closed_loop(server.port, "dflt", 8, 0.3)
        finally:
            await server.stop()
        return opened, closed, t0

    opened, closed, t0 = uvloop.run(body())
    assert opened.records and not opened.errors and not opened.retry_after_missing
    statuses = {r[2] for r in opened.records}
    assert statuses == {200, 503}
    assert not any(r[3] for r in opened.records)
    assert closed.records and all(r[3] for r in closed.records if r[2] == 200)
    # The storm window as the client ran it: it starts sending a little after t0.
    last_sent = max(r[0] for r in opened.records)
    summary = summarize(opened, t0, last_sent - t0 + 1e-3, 100.0)
    assert summary["sent_during_storm"] == len(opened.records)
    assert 0 < summary["refused_share"] < 1


@pytest.mark.parametrize("factor", ["0", "-0.5", "1.5"])
def test_below_factor_outside_0_to_1_is_refused_before_any_server_starts(
    factor: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--scenario", "below", "--below-factor", factor])
    assert exc.value.code == 2
    assert "--below-factor" in capsys.readouterr().err
