"""The dashboard on the management port: its data endpoint, and the page itself
loaded in headless Chromium while load runs (a screenshot is kept)."""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from clipper_core.config import ServerConfig
from clipper_core.deployers import create_endpoint
from tests.observability.artifacts import ARTIFACTS, record_artifact
from tests.observability.test_metrics_server import wait_for
from tests.server import models
from tests.server.conftest import Running, start_server

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_page_and_data_endpoint(server: Running) -> None:
    base = server.bg.management_url
    status, ctype, body = get(base + "/dashboard")
    assert status == 200 and ctype.startswith("text/html")
    assert b'<script src="/dashboard/dashboard.js">' in body
    status, ctype, body = get(base + "/dashboard/dashboard.js")
    assert status == 200 and "javascript" in ctype and b"/dashboard/data" in body
    with urllib.request.urlopen(base + "/dashboard", timeout=30) as resp:  # no framing
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Content-Security-Policy"] == "frame-ancestors 'none'"

    create_endpoint(server.conn, "dash", "doubles", models.make_sum(), slo_micros=500_000)
    for i in range(10):
        assert server.client.predict("dash", {"input": [float(i % 5)]})[0] == 200

    def data() -> dict[str, Any]:
        status, ctype, body = get(base + "/dashboard/data", server.admin_headers())
        assert status == 200 and ctype == "application/json"
        return dict(json.loads(body))

    def sampled() -> dict[str, Any] | None:
        d = data()
        points = d["series"]["apps"].get("dash", {}).get("throughput", [])
        return d if sum(v or 0 for v in points) > 0 else None

    doc = wait_for(sampled, "the queries to show in the per-second series")
    (app,) = doc["apps"]
    assert app["name"] == "dash" and app["model_key"] == "dash:1"
    assert app["slo_seconds"] == 0.5 and app["requests"] == 10
    (model,) = doc["models"]
    assert model["key"] == "dash:1" and model["current"] is True
    assert model["replicas"] == 1 and model["replica_list"][0]["pid"] > 0
    assert model["cache_hits"] == 5
    series = doc["series"]
    assert set(series["apps"]["dash"]) >= {"throughput", "p99_seconds", "slo_attainment"}
    assert set(series["models"]["dash:1"]) >= {"mean_batch_size", "cache_hit_ratio"}
    assert len(series["apps"]["dash"]["throughput"]) == len(series["t"])
    assert doc["server"]["query_url"] == server.bg.query_url


def test_data_endpoint_needs_the_management_token(tmp_path: Path) -> None:
    if not hasattr(ServerConfig(), "admin_token"):
        pytest.skip("this build has no management token")
    running = start_server(tmp_path / "state", admin_token="s3cret-token")
    try:
        base = running.bg.management_url
        assert get(base + "/dashboard")[0] == 200  # the static page holds no data
        assert get(base + "/dashboard/data")[0] == 401
        ok = {"Authorization": "Bearer s3cret-token"}
        assert get(base + "/dashboard/data", ok)[0] == 200
        assert get(base + "/dashboard/data?token=s3cret-token")[0] == 200
        assert get(base + "/dashboard/data?token=wrong")[0] == 401
    finally:
        running.bg.stop()


def make_scorer() -> Any:
    """A model whose batches cost 2 ms plus 0.2 ms per input: batching pays."""

    def predict(inputs: list[Any]) -> list[float]:
        time.sleep(0.002 + 0.0002 * len(inputs))
        return [float(sum(x)) for x in inputs]

    return predict


def _chromium() -> str:
    for candidate in (os.environ.get("CLIPPER_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and (path := shutil.which(candidate)):
            return path
    pytest.skip(
        "Chromium is not installed (Debian: apt-get install chromium; or set"
        " CLIPPER_CHROMIUM): the dashboard browser test needs it"
    )


class Load:
    """Clients querying an app from threads until stopped (bounded in time and count)."""

    def __init__(self, running: Running, app: str, threads: int = 2, pause: float = 0.002) -> None:
        self.running = running
        self.app = app
        self.pause = pause
        self.stop = threading.Event()
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        end = time.monotonic() + 120
        for n in range(20_000):
            if self.stop.is_set() or time.monotonic() > end:
                return

            # Half repeat a small set of inputs (cache hits), half are new.
            def x() -> list[float]:
                v = rng.randrange(40) if rng.random() < 0.5 else rng.random() * 1e6
                return [float(v), 1.0, 2.0]

            body = {"input": x()} if n % 3 else {"input_batch": [x() for _ in range(6)]}
            status, _ = self.running.client.predict(self.app, body)
            self.sent += 1
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.stop.wait(self.pause)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


@pytest.mark.slow
def test_dashboard_in_a_real_browser_under_load(tmp_path: Path) -> None:
    chromium = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    running = start_server(tmp_path / "state")
    try:
        create_endpoint(running.conn, "fraud-detector", "doubles", make_scorer(), slo_micros=50_000)
        with Load(running, "fraud-detector") as load:
            # Let the sampler collect some seconds of history for the charts.
            wait_for(lambda: load.sent >= 300, "some load")
            time.sleep(8)
            with sync_api.sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": 1440, "height": 900})
                    page.goto(
                        f"{running.bg.management_url}/dashboard"
                        f"?token={running.server.config.admin_token}"
                    )
                    page.wait_for_function(
                        "() => Number(document.body.dataset.updates) >= 3", timeout=30_000
                    )
                    fig = 'figure[data-app="fraud-detector"][data-chart="{}"]'
                    page.wait_for_function(
                        "(sel) => Number(document.querySelector(sel)?.dataset.latest) > 0",
                        arg=fig.format("throughput"),
                        timeout=30_000,
                    )
                    shot = tmp_path / "dashboard.png"
                    page.screenshot(path=str(shot), full_page=True)

                    def latest(chart: str) -> float:
                        raw = page.get_attribute(fig.format(chart), "data-latest")
                        return float(raw) if raw else float("nan")

                    assert page.inner_text("section.app h3.app-name") == "fraud-detector"
                    assert latest("throughput") > 0
                    assert latest("latency") > 0
                    assert 0 <= latest("attainment") <= 100
                    assert latest("batch_size") >= 1
                    assert 0 <= latest("cache_hit_ratio") <= 100
                    readout = page.inner_text(f"{fig.format('throughput')} .latest")
                    assert readout.endswith("req/s") and not readout.startswith("0.00")
                    row = page.inner_text('#models tr.model[data-model="fraud-detector:1"]')
                    assert "1/1 healthy" in row and "current" in row
                finally:
                    browser.close()
        # Overload (503) may answer some queries; nothing else may fail.
        assert set(load.statuses) <= {200, 503} and load.statuses[200] > 0
    finally:
        running.bg.stop()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    kept = ARTIFACTS / "dashboard.png"
    shutil.copyfile(shot, kept)
    record_artifact("dashboard screenshot under load", kept)
    print(f"dashboard screenshot: {kept}")
