#!/bin/sh
# A/B of two checkouts with bench.hops (and optionally bench.frontend_wrk), interleaved,
# in one run under the shared benchmark lock:
#   sh bench/hops_ab.sh BASE_TREE NEW_TREE OUT_DIR [ROUNDS] [WRK_SECONDS]
# WRK_SECONDS 0 skips wrk; N and STRACE_N (environment) size bench.hops.  The floors are
# measured once, by the new tree.
set -e
base=$1; new=$2; out=$3; rounds=${4:-1}; wrk=${5:-0}
py=${PYTHON:-$PWD/.venv/bin/python}
mkdir -p "$out"
cat /proc/loadavg > "$out/loadavg-start"
(cd "$new" && PYTHONPATH=$PWD $py -m bench.hops --api rest --no-trace --n ${N:-3000} --strace-n ${STRACE_N:-1000} \
    --json "$out/floors.json" > "$out/floors.txt")
r=1
while [ "$r" -le "$rounds" ]; do
  for side in base new; do
    eval tree=\$$side
    (cd "$tree" && PYTHONPATH=$PWD $py -m bench.hops --no-floors --n ${N:-3000} --strace-n ${STRACE_N:-1000} \
        --json "$out/hops-$side-$r.json" > "$out/hops-$side-$r.txt")
  done
  if [ "$wrk" -gt 0 ]; then
    for side in base new; do
      eval tree=\$$side
      (cd "$tree" && PYTHONPATH=$PWD $py -m bench.frontend_wrk --duration "$wrk" > "$out/wrk-$side-$r.txt" 2>&1)
    done
  fi
  r=$((r + 1))
done
cat /proc/loadavg > "$out/loadavg-end"
