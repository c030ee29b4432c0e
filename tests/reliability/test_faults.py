"""Faults: a replica killed mid-batch is back within 5 s, and the batch it held is
answered by the other replica; a model that hangs is caught by the batch timeout
and its replica recycled; a container that fails to start reports its stderr
through the CLI, which exits 1; a management change whose client goes away is
still carried out."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability import models
from tests.reliability.conftest import REPO, http, pid_alive, raw_request, wait_for
from tests.server.conftest import Running, start_server


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = start_server(tmp_path / "state")
    try:
        yield r
    finally:
        r.bg.stop()


def test_replica_killed_mid_batch_is_restarted_within_5_s(running: Running) -> None:
    conn = running.conn
    conn.register_application("k9", "doubles", "-1", 10_000_000)
    conn.deploy_pickled(
        "k9", 1, "doubles", models.make_sleeper(0.2), batch_size=4, cache_enabled=False
    )
    conn.link_model_to_app("k9", "k9")
    mv = running.server.dataplane.get_model_version("k9", "1")
    [pid] = running.replica_pids("k9")
    url = f"{running.bg.query_url}/k9/predict"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futs = [pool.submit(http, "POST", url, {"input": [float(i)]}) for i in range(24)]
        wait_for("a batch in flight", lambda: any(i["busy"] for i in mv.replica_info()))
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        def back() -> bool:
            pids = running.replica_pids("k9")
            return len(pids) == 1 and pids[0] != pid and "0" in mv.replicas

        wait_for("the replica restarted", back, timeout=30)
        restarted_in = time.monotonic() - killed_at
        results = [f.result(timeout=60) for f in futs]
    assert restarted_in < 5.0, f"restarted after {restarted_in:.2f} s"
    # Nothing hangs: each request is answered by a replica or with a clear error.
    for status, _, body in results:
        assert status == 200 or body.get("cause"), body
    assert not pid_alive(pid)
    status, _, body = http("POST", url, {"input": [1.0]})
    assert status == 200 and not body["default"]


def test_batch_in_flight_on_a_killed_replica_is_answered_by_the_other_one(
    running: Running, tmp_path: Path
) -> None:
    conn = running.conn
    conn.register_application("k9r", "doubles", "-1", 30_000_000)
    calls, gate = tmp_path / "calls.log", tmp_path / "gate"
    # Batches of exactly four (a long batch wait): the four requests below make one
    # batch, on one replica, while the other replica stays idle.  The model logs a
    # batch, then holds it until the gate file exists.
    conn.deploy_pickled(
        "k9r",
        1,
        "doubles",
        models.make_gated_logger(str(calls), str(gate)),
        num_replicas=2,
        batch_size=4,
        batch_wait_micros=5_000_000,
        cache_enabled=False,
    )
    conn.link_model_to_app("k9r", "k9r")
    mv = running.server.dataplane.get_model_version("k9r", "1")
    wait_for("both replicas connected", lambda: len(mv.replicas) == 2)
    pids = running.replica_pids("k9r")
    assert len(pids) == 2
    assert mv.retried == 0
    inputs = [1.0, 2.0, 3.0, 4.0]
    url = f"{running.bg.query_url}/k9r/predict"
    try:
        with concurrent.futures.ThreadPoolExecutor(len(inputs)) as pool:
            futs = [pool.submit(http, "POST", url, {"input": [x]}) for x in inputs]
            # The whole batch is in the model, which cannot answer before the gate
            # opens: it is surely in flight when its replica is killed.
            first = wait_for(
                "the batch in the model",
                lambda: (c := models.read_pid_calls(str(calls))) and len(c) >= 4 and c,
            )
            victim = first[0][0]
            assert sorted(first) == [(victim, x) for x in inputs], first
            assert victim in pids
            [survivor] = [p for p in pids if p != victim]
            assert sum(i["busy"] for i in mv.replica_info()) == 1
            os.kill(victim, signal.SIGKILL)
            # The batch comes back to the queue (split, to isolate a crashing
            # input) and a live replica takes it: the idle one, or the warm
            # standby that took the killed one's place.
            wait_for(
                "the batch retried",
                lambda: (
                    mv.retried == len(inputs)
                    and len(models.read_pid_calls(str(calls))) > len(inputs)
                ),
            )
            gate.touch()
            results = [f.result(timeout=60) for f in futs]
            retried = models.read_pid_calls(str(calls))
    finally:
        gate.touch()  # never leave a replica holding a batch
    assert not pid_alive(victim)
    # Each request in the killed batch got the model's real answer, from a live
    # replica: none failed, none got the default output.
    live = set(running.replica_pids("k9r")) | {survivor}
    answered_by = {}
    for x, (status, _, body) in zip(inputs, results, strict=True):
        assert status == 200 and not body["default"], body
        pid, output = body["output"]
        assert pid in live and pid != victim and output == 2.0 * x, body
        answered_by[x] = pid
    # The model saw each input twice: on the killed replica, then on a live one.
    again = [(answered_by[x], x) for x in inputs]
    assert sorted(retried) == sorted(first + again), retried
    # Each input was handed back exactly once.
    assert mv.retried == len(inputs)
    model = conn.get_metrics()["models"]["k9r:1"]
    assert model["retried"] == len(inputs) and model["errors"] == {}, model


def test_hung_model_is_timed_out_and_its_replica_recycled(running: Running) -> None:
    conn = running.conn
    conn.register_application("hang", "doubles", "-1", 30_000_000)
    conn.deploy_pickled("hang", 1, "doubles", models.make_hanger(), batch_size=1, batch_timeout=1.0)
    conn.link_model_to_app("hang", "hang")
    info = conn.get_model_info("hang", 1)
    assert info is not None and info["batch_timeout"] == 1.0
    url = f"{running.bg.query_url}/hang/predict"
    status, _, body = http("POST", url, {"input": [1.0]})
    assert status == 200 and not body["default"]
    [pid] = running.replica_pids("hang")
    assert body["output"] == pid

    status, _, body = http("POST", url, {"input": [-1.0]})  # hangs the model
    assert status == 504, body
    assert body["error"] == "model_timeout" and "batch timeout of 1 s" in body["cause"]

    def recycled() -> int | None:
        pids = running.replica_pids("hang")
        mv = running.server.dataplane.get_model_version("hang", "1")
        if len(pids) == 1 and pids[0] != pid and "0" in mv.replicas:
            return pids[0]
        return None

    new_pid = wait_for("the hung replica replaced", recycled, timeout=30)
    assert not pid_alive(pid)
    status, _, body = http("POST", url, {"input": [2.0]})
    assert status == 200 and body["output"] == new_pid and not body["default"]
    mv = running.server.dataplane.get_model_version("hang", "1")
    assert mv.timeouts == 1
    # Its supervisor restarts it: the frontend neither probes nor quarantines it.
    slot = mv.replicas["0"]
    assert not slot.watched and slot.watch is None and slot.quarantine == 0.0 and slot.up


BROKEN_MODEL = """
from model_containers import Model


class Broken(Model):
    input_type = "doubles"

    def load(self):
        raise RuntimeError("weights file is missing: MARKER-7f3a")

    def predict(self, inputs):
        return [0.0 for _ in inputs]
"""


def test_cli_deploy_of_a_broken_model_prints_stderr_and_exits_1(
    running: Running, tmp_path: Path
) -> None:
    source = tmp_path / "brokenmodel.py"
    source.write_text(BROKEN_MODEL)
    env = {**os.environ, "CLIPPER_STATE_DIR": str(running.state_dir)}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipper_core.cli",
            "--query-port",
            str(running.server.query_port),
            "--management-port",
            str(running.server.management_port),
            "deploy",
            "broken",
            f"{source}:Broken",
            "--input-type",
            "doubles",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    assert res.returncode == 1, res
    # An error message (holding the container's stderr tail), not a CLI crash.
    assert res.stderr.startswith("clipper: error:"), res.stderr
    assert "stderr tail" in res.stderr and "MARKER-7f3a" in res.stderr, res.stderr
    assert "clipper_core/cli.py" not in res.stderr
    assert running.conn.get_all_models() == []


def test_a_scale_whose_client_goes_away_is_still_carried_out(running: Running) -> None:
    """The management client disconnects right after asking for two replicas:
    the change runs to its end (the count stored and the replica started), not
    stopped halfway until a restart."""
    conn = running.conn
    conn.register_application("grow", "doubles", "-1", 1_000_000)
    conn.deploy_pickled("grow", 1, "doubles", models.make_sleeper(0.0), cache_enabled=False)
    conn.link_model_to_app("grow", "grow")
    mv = running.server.dataplane.get_model_version("grow", "1")
    body = json.dumps({"model_name": "grow", "num_replicas": 2}).encode()
    auth = f"Authorization: Bearer {conn.cm.admin_token}\r\n" if conn.cm.admin_token else ""
    request = (
        "POST /admin/set_num_replicas HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{auth}\r\n"
    ).encode() + body
    raw_request(running.server.management_port, request).close()  # gone at once
    wait_for("the second replica serving", lambda: len(mv.replicas) == 2, timeout=60)
    assert conn.get_num_replicas("grow") == 2
