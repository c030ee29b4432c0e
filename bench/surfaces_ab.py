"""Two checkouts side by side on the surfaces a per-request change must not slow:
OIP binary and gRPC, the prediction cache, SLO attainment at the adaptive batch
sizes, and an overload storm (issue 22's "no regression elsewhere").

    python -m bench.surfaces_ab BASE_TREE NEW_TREE [--rounds 3] [--cells grpc,storm]

Both trees are driven by *this* checkout's load generators (``python -m bench``
and ``python -m bench.storm``), so only the server differs: each run puts a
folder holding this ``bench`` package first on ``PYTHONPATH`` and the tree after
it (build each tree's extensions first).  Rounds interleave the trees, the order
flipping every round.  Prints every run, then per cell and tree the median and
range of its figures; ``--json`` keeps every run's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent

#: cell -> the arguments of ``python -m ...`` (a report or JSON path is added).
CELLS: dict[str, list[str]] = {
    "binary": ["bench", "noop", "-c", "32", "--protocol", "oip-binary", "-d", "6", "--warmup", "2"],
    "grpc": ["bench", "noop", "-c", "32", "--protocol", "oip-grpc", "-d", "5", "--warmup", "2"],
    "cache": ["bench", "cache", "-d", "6", "--warmup", "2"],
    "slo": ["bench", "matmul", "-d", "6", "--warmup", "2"],
    "storm": ["bench.storm", "--scenario", "open10x", "--duration", "5"],
}


def _figures(cell: str, path: Path) -> dict[str, float]:
    data = json.loads(path.read_text())
    if cell == "storm":
        o = data["open10x"]
        return {
            "goodput/C": o["goodput_share_of_capacity"],
            "503 p99 ms": o["refusal_latency_ms"]["p99"],
            "admitted p99 ms": o["admitted_latency_ms"]["p99"],
            "late %": 100 * o["admitted_late_share"],
            "recovery s": o["recovery_s"],
        }
    summary = data["runs"][0]["summary"]
    server = summary["server"]
    out = {
        "req/s": summary["throughput_rps"],
        "p50 ms": summary["latency_ms"]["p50"],
        "p99 ms": summary["latency_ms"]["p99"],
        "SLO %": 100 * summary["slo_attainment"],
        "CPU µs/req": server["cpu_server_us_per_req"],
        "batch": server["mean_batch_size"],
    }
    if server.get("cache_hit_rate") is not None:
        out["hit %"] = 100 * server["cache_hit_rate"]
    return out


def _run(cell: str, tree: Path, bench_dir: Path, out: Path) -> dict[str, float]:
    args = [sys.executable, "-m", *CELLS[cell]]
    if cell == "storm":
        args += ["--json", str(out)]
    else:
        args += ["--no-plots", "--out", str(out.parent), "--name", out.stem]
    env = {**os.environ, "PYTHONPATH": f"{bench_dir}{os.pathsep}{tree}"}
    proc = subprocess.run(args, cwd=bench_dir, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        tail = proc.stdout[-800:] + proc.stderr[-800:]
        raise SystemExit(f"surfaces_ab: {cell} on {tree} failed:\n{tail}")
    return _figures(cell, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cells", default=",".join(CELLS), help=f"of {','.join(CELLS)}")
    ap.add_argument("--json", type=Path, help="also write every run's figures here")
    args = ap.parse_args(argv)
    cells = args.cells.split(",")
    for cell in cells:
        if cell not in CELLS:
            ap.error(f"unknown cell {cell!r}: one of {', '.join(CELLS)}")
    trees = {"base": args.base.resolve(), "new": args.new.resolve()}
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="surfaces_ab-") as tmp:
        bench_dir = Path(tmp) / "load"
        bench_dir.mkdir()
        (bench_dir / "bench").symlink_to(BENCH)  # this checkout's load generators
        print("load", " ".join(Path("/proc/loadavg").read_text().split()[:3]), flush=True)
        for r in range(args.rounds):
            order = ("base", "new") if r % 2 == 0 else ("new", "base")
            for cell in cells:
                for side in order:
                    started = time.monotonic()
                    out = Path(tmp) / f"{r}-{cell}-{side}.json"
                    figures = _run(cell, trees[side], bench_dir, out)
                    runs.append({"round": r, "cell": cell, "side": side, **figures})
                    shown = "  ".join(f"{k} {v:.4g}" for k, v in figures.items())
                    took = time.monotonic() - started
                    print(f"round {r} {cell:6s} {side:4s} ({took:4.1f} s)  {shown}", flush=True)
        print("load", " ".join(Path("/proc/loadavg").read_text().split()[:3]))
    print("medians [range]:")
    for cell in cells:
        for side in ("base", "new"):
            mine = [x for x in runs if x["cell"] == cell and x["side"] == side]
            keys = [k for k in mine[0] if k not in ("round", "cell", "side")]
            shown = "  ".join(
                f"{k} {statistics.median(x[k] for x in mine):.4g}"
                f" [{min(x[k] for x in mine):.4g}-{max(x[k] for x in mine):.4g}]"
                for k in keys
            )
            print(f"  {cell:6s} {side:4s} {shown}")
    if args.json is not None:
        args.json.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
