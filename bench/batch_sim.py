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


def attainment(
    rate: float,
    limit: int,
    *,
    a_ms: float,
    b_ms: float,
    replicas: int,
    slo_ms: float,
    queries: int,
    seed: int,
) -> float:
    """The share of ``queries`` Poisson arrivals at ``rate`` per second answered
    within ``slo_ms`` when each of ``replicas`` takes up to ``limit`` at a time."""
    rng = random.Random(seed)
    t = 0.0
    arrivals = []
    for _ in range(queries):
        t += rng.expovariate(rate / 1000.0)
        arrivals.append(t)
    waiting: collections.deque[float] = collections.deque()
    free = [(0.0, r) for r in range(replicas)]  # (time the replica is free, replica)
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
        done = when + a_ms * size + b_ms
        for _ in range(size):
            if done - waiting.popleft() <= slo_ms:
                in_time += 1
        answered += size
        heapq.heappush(free, (done, replica))
    return in_time / queries


def max_rate(
    limit: int,
    *,
    a_ms: float,
    b_ms: float,
    replicas: int,
    slo_ms: float,
    queries: int,
    seeds: list[int],
    target: float = 0.99,
    steps: int = 14,
) -> float:
    """The highest rate (req/s, bisected over ``steps``) at which every seed reaches
    ``target`` attainment."""
    low, high = 1.0, 1000.0 * replicas * limit / (a_ms * limit + b_ms)  # capacity
    for _ in range(steps):
        mid = (low + high) / 2
        ok = all(
            attainment(
                mid,
                limit,
                a_ms=a_ms,
                b_ms=b_ms,
                replicas=replicas,
                slo_ms=slo_ms,
                queries=queries,
                seed=s,
            )
            >= target
            for s in seeds
        )
        low, high = (mid, high) if ok else (low, mid)
    return low


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    rates = {
        int(size): max_rate(
            int(size),
            a_ms=args.a_ms,
            b_ms=args.b_ms,
            replicas=args.replicas,
            slo_ms=args.slo_ms,
            queries=args.queries,
            seeds=seeds,
            target=args.attainment,
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
