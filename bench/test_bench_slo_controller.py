"""Cost of ``SloController.observe``, the Cython extension against its twin.

One round is 1000 calls from a Python ``for`` loop over pre-made (batch size,
latency) pairs, so the per-call figures include the loop (~10-20 ns).  The
module prints ns per call, the Cython speed-up and the machine at the end.

    .venv/bin/python -m pytest bench/test_bench_slo_controller.py --benchmark-only -q
"""

from __future__ import annotations

import os
import platform
import random
import sys
import timeit
from collections.abc import Iterator
from typing import Any

import pytest

from clipper_core.structures import load

SLO = 0.05
CALLS = 1000
IMPLS = {"cython": True, "python": False}
CASES: dict[str, dict[str, Any]] = {
    # Latencies around the SLO, so that every AIMD branch runs.
    "aimd": {"mode": "aimd"},
    # Varied sizes under a linear model: refits every 16 calls (window 512),
    # amortised into the per-call figure.
    "quantile": {"mode": "quantile"},
    # A refit on every call: the cost of one refit of a full 512 window.
    "quantile refit_every=1": {"mode": "quantile", "refit_every": 1},
}


def _pairs(case: str) -> list[tuple[int, float]]:
    rng = random.Random(0)
    if case == "aimd":
        return [(32, rng.choice((0.02, 0.047, 0.06))) for _ in range(CALLS)]
    pairs = []
    for _ in range(CALLS):
        n = rng.randint(1, 64)
        pairs.append((n, 0.0007 * n + 0.005 + rng.gauss(0.0, 0.0005)))
    return pairs


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"


def _loop_ns() -> float:
    """The cost of one iteration of the benchmark's loop with no call in it."""
    pairs = _pairs("quantile")

    def run() -> None:
        for _n, _latency in pairs:
            pass

    best = min(timeit.repeat(run, number=20, repeat=50))
    return best / 20 / CALLS * 1e9


@pytest.fixture(scope="module")
def results(pytestconfig: pytest.Config) -> Iterator[dict[tuple[str, str], float]]:
    table: dict[tuple[str, str], float] = {}
    yield table
    if not table:
        return
    loop = _loop_ns()
    lines = [
        "",
        f"SloController.observe: median ns per call in a loop of {CALLS}, and net of the",
        f"bare loop ({loop:.1f} ns); {_machine()}",
    ]
    for case in CASES:
        fast, spec = table.get((case, "cython")), table.get((case, "python"))
        line = f"  {case:<24}"
        for name, ns in (("cython", fast), ("python", spec)):
            if ns is not None:
                line += f" {name} {ns:8.1f} ns ({ns - loop:8.1f} net)"
        if fast and spec:
            line += f"  speed-up {spec / fast:4.1f}x ({(spec - loop) / (fast - loop):4.1f}x net)"
        lines.append(line)
    # Teardown output is captured; print around the capture, as capsys.disabled() does.
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    reporter = pytestconfig.pluginmanager.getplugin("terminalreporter")
    with capture.global_and_fixture_disabled():
        for line in lines:
            if reporter is not None:
                reporter.write_line(line)
            else:
                print(line)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl_name", list(IMPLS))
def test_observe(
    benchmark: Any, results: dict[tuple[str, str], float], impl_name: str, case: str
) -> None:
    ctl = load(IMPLS[impl_name]).SloController(SLO, **CASES[case])
    observe = ctl.observe
    pairs = _pairs(case)

    def run() -> None:
        for n, latency in pairs:
            observe(n, latency)

    benchmark.group = f"observe x{CALLS}: {case}"
    benchmark(run)
    assert 1 <= ctl.batch_size <= ctl.max_batch_size
    if benchmark.stats is not None:  # None under --benchmark-disable
        ns = benchmark.stats.stats.median / CALLS * 1e9
        benchmark.extra_info["ns_per_observe"] = round(ns, 1)
        results[(case, impl_name)] = ns
