#!/bin/sh
# Interleaved rounds of two checkouts, quick: bench.hops without floors, stamps or
# strace (p50, CPU and wake-ups per query), then bench.frontend_wrk (WRK_SECONDS > 0).
#   sh bench/hops_rounds.sh BASE_TREE NEW_TREE OUT_DIR ROUNDS [WRK_SECONDS]
set -e
base=$1; new=$2; out=$3; rounds=$4; wrk=${5:-0}
py=${PYTHON:-$PWD/.venv/bin/python}
mkdir -p "$out"
cat /proc/loadavg > "$out/loadavg-start"
r=1
while [ "$r" -le "$rounds" ]; do
  for side in base new; do
    eval tree=\$$side
    if [ "$wrk" -gt 0 ]; then
      (cd "$tree" && PYTHONPATH=$PWD $py -m bench.frontend_wrk --duration "$wrk" > "$out/wrk-$side-$r.txt" 2>&1)
    else
      (cd "$tree" && PYTHONPATH=$PWD $py -m bench.hops --no-floors --no-trace --strace-n 0 \
          --n "${N:-2000}" --json "$out/hops-$side-$r.json" > "$out/hops-$side-$r.txt")
    fi
  done
  r=$((r + 1))
done
cat /proc/loadavg > "$out/loadavg-end"
