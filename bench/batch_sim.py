"""A queueing simulation of the batching dispatch, to read the controller sweeps by.

    python -m bench.batch_sim [--a-ms 1] [--b-ms 10.7] [--replicas 2] [--slo-ms 100]
        [--sizes 20,30,35,38,40,45,50,60,80] [--queries 60000] [--seeds 1,2]

Poisson arrivals at a rate; ``--replicas`` replicas, each taking up to L queued
queries whenever it is free (the server's dispatch with no batch wait); a batch
of n takes ``a*n + b`` ms.  For each batch size limit L it bisects for the
highest rate at which at least ``--attainment`` of the queries finish within the
SLO (in every seed), the same test as ``bench --sweep``'s ramps.  It leaves out
HTTP, the event loop and the machine's noise: the sweeps of the ``sleep-sweep``
scenario measure those (docs/benchmarks/controllers.md compares the two).
"""

from __future__ import annotations

import argparse
import collections
import heapq
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchModel:
    """A batch of n takes ``a_ms * n + b_ms``; ``replicas`` take batches at once."""

    a_ms: float
    b_ms: float
    replicas: int
    slo_ms: float


def attainment(model: BatchModel, rate: float, limit: int, *, queries: int, seed: int) -> float:
    """The share of ``queries`` Poisson arrivals at ``rate`` per second answered
    within the SLO when each replica takes up to ``limit`` queued queries at a time."""
    rng = random.Random(seed)
    t = 0.0
    arrivals = []
    for _ in range(queries):
        t += rng.expovariate(rate / 1000.0)
        arrivals.append(t)
    waiting: collections.deque[float] = collections.deque()
    free = [(0.0, r) for r in range(model.replicas)]  # (time the replica is free, replica)
    nxt = in_time = answered = 0
    while answered < queries:
        when, replica = heapq.heappop(free)
        while nxt < queries and arrivals[nxt] <= when:
            waiting.append(arrivals[nxt])
            nxt += 1
        if not waiting:  # idle until the next arrival
            when = arrivals[nxt]
            waiting.append(when)
            nxt += 1
        size = min(len(waiting), limit)
        done = when + model.a_ms * size + model.b_ms
        for _ in range(size):
            if done - waiting.popleft() <= model.slo_ms:
                in_time += 1
        answered += size
        heapq.heappush(free, (done, replica))
    return in_time / queries


def max_rate(
    model: BatchModel,
    limit: int,
    *,
    queries: int,
    seeds: list[int],
    target: float = 0.99,
    steps: int = 14,
) -> float:
    """The highest rate (req/s, bisected over ``steps``) at which every seed reaches
    ``target`` attainment, up to the limit's capacity (full batches back to back)."""
    low, high = 1.0, 1000.0 * model.replicas * limit / (model.a_ms * limit + model.b_ms)
    for _ in range(steps):
        mid = (low + high) / 2
        ok = all(attainment(model, mid, limit, queries=queries, seed=s) >= target for s in seeds)
        low, high = (mid, high) if ok else (low, mid)
    return low


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument("--a-ms", type=float, default=1.0, help="cost per query in a batch")
    ap.add_argument("--b-ms", type=float, default=10.7, help="cost per batch (sleep + RPC)")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--slo-ms", type=float, default=100.0)
    ap.add_argument("--attainment", type=float, default=0.99)
    ap.add_argument("--sizes", default="20,30,35,38,40,45,50,60,80")
    ap.add_argument("--queries", type=int, default=60000)
    ap.add_argument("--seeds", default="1,2")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    model = BatchModel(args.a_ms, args.b_ms, args.replicas, args.slo_ms)
    rates = {
        int(size): max_rate(
            model, int(size), queries=args.queries, seeds=seeds, target=args.attainment
        )
        for size in args.sizes.split(",")
    }
    best = max(rates.values())
    print("limit  max req/s  share of the best")
    for size, rate in rates.items():
        print(f"{size:5d}  {rate:9.0f}  {100 * rate / best:5.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
