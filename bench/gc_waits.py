"""What the query path's waits leave for the GC: full (oldest-generation)
collections per 100,000 queries, with ``wait_until`` as the REST path uses it.

    PYTHONPATH=TREE python -m bench.gc_waits [--queries 200000] [--conc 32] [--cycles 2]

``--conc`` requesters each put a future in a shared queue and ``wait_until`` it
with a 1 s deadline (an SLO's); a dispatcher answers everything queued once per
loop turn, as batches are.  Each query also leaves ``--cycles`` reference cycles
(in the server: exceptions, tasks, protocol objects), which is what makes young
collections run at all: without them everything dies by reference counting.
A wait whose objects outlive a few young collections reaches the oldest
generation, and full collections follow: in the server they took 20-30 ms each
(its ~46,000 tracked objects), which was the p99 at c=32.  The figures are
counts, not timings: they do not depend on the load.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

import uvloop

from clipper_core.dataplane.futures import wait_until


async def _run(queries: int, conc: int, cycles: int) -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    queue: list[asyncio.Future[int]] = []
    done = 0

    async def requester() -> None:
        nonlocal done
        while done < queries:
            fut: asyncio.Future[int] = loop.create_future()
            queue.append(fut)
            for _ in range(cycles):
                garbage: dict[str, object] = {}
                garbage["self"] = garbage
            await wait_until([fut], time.monotonic() + 1.0)
            done += 1

    async def dispatcher() -> None:
        while done < queries:
            batch = queue[:]
            queue.clear()
            for fut in batch:
                fut.set_result(0)
            await asyncio.sleep(0)

    before = [s["collections"] for s in gc.get_stats()]
    await asyncio.gather(dispatcher(), *(requester() for _ in range(conc)))
    after = [s["collections"] for s in gc.get_stats()]
    return after[1] - before[1], after[2] - before[2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=200_000)
    ap.add_argument("--conc", type=int, default=32)
    ap.add_argument("--cycles", type=int, default=2)
    a = ap.parse_args(argv)
    gc.collect()
    gen1, gen2 = uvloop.run(_run(a.queries, a.conc, a.cycles))
    per = 100_000 / a.queries
    print(
        f"queries={a.queries} conc={a.conc} cycles={a.cycles} tracked={len(gc.get_objects())}"
        f" gen1_per_100k={gen1 * per:.0f} full_per_100k={gen2 * per:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
