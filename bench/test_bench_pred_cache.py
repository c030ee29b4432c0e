"""PredictionCache throughput: the hit path, and a miss + reserve + put cycle.

Each round runs ``N`` operations in a plain Python loop, as the query frontend
calls the cache; the loop itself costs a few ns per operation and is included.
Prints operations per second for each implementation.
"""

from __future__ import annotations

import asyncio
import os
import platform
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from clipper_core.structures import load

N = 1000
MODEL, VERSION = "resnet50", "3"
KEYS = [b"input-%06d" % i for i in range(N)]


@pytest.fixture(params=["cython", "python"])
def impl(request: pytest.FixtureRequest) -> SimpleNamespace:
    return load(request.param == "cython")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    try:
        yield lp
    finally:
        lp.close()


def report(benchmark: Any, impl: SimpleNamespace, what: str) -> None:
    per_s = N / benchmark.stats.stats.median
    benchmark.extra_info["ops_per_s"] = per_s
    print(
        f"\n{what} [{impl.name}]: {per_s / 1e6:.2f} M/s "
        f"(median of {benchmark.stats.stats.rounds} rounds of {N}; "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs)"
    )


def test_bench_get_hit(benchmark: Any, impl: SimpleNamespace) -> None:
    cache = impl.PredictionCache(1 << 24)
    for key in KEYS:
        cache.put(MODEL, VERSION, key, b"label-" + key)
    get = cache.get

    def lookups() -> None:
        for key in KEYS:
            get(MODEL, VERSION, key)

    benchmark(lookups)
    assert cache.misses == 0 and cache.hits >= N
    report(benchmark, impl, "get hits")


def test_bench_get_hit_colliding(benchmark: Any, impl: SimpleNamespace) -> None:
    """Every key hashes alike: the full comparison is what keeps answers right."""
    cache = impl.PredictionCache(1 << 24, hash_fn=lambda m, v, x: 7)
    keys = KEYS[:16]
    for key in keys:
        cache.put(MODEL, VERSION, key, b"label-" + key)
    get = cache.get
    keys = keys * (N // len(keys)) + keys[: N % len(keys)]

    def lookups() -> None:
        for key in keys:
            get(MODEL, VERSION, key)

    benchmark(lookups)
    report(benchmark, impl, "get hits, 16 colliding keys")


def test_bench_miss_reserve_put(
    benchmark: Any, impl: SimpleNamespace, loop: asyncio.AbstractEventLoop
) -> None:
    # A budget of about 100 entries: every put also evicts, so CLOCK runs too.
    cache = impl.PredictionCache(100 * 200)
    get, reserve, put = cache.get, cache.reserve, cache.put
    rounds = iter(range(1 << 30))

    def cycles() -> None:
        version = str(next(rounds))  # fresh keys each round: every get misses
        for key in KEYS:
            if get(MODEL, version, key) is None:
                _fut, _owner = reserve(MODEL, version, key, loop)
                put(MODEL, version, key, b"label", 200)

    benchmark(cycles)
    assert cache.hits == 0 and cache.pending == 0 and cache.nbytes <= cache.max_bytes
    report(benchmark, impl, "miss + reserve + put")
