"""Benchmarks: pytest-benchmark microbenchmarks of the Cython structures
(``test_bench_*.py``, ``make bench``) and the end-to-end load harness
(``python -m bench``; see docs/guides/benchmarks.md).

Harness modules: ``__main__`` (CLI), ``scenario`` (TOML scenarios in
``scenarios/``), ``serverproc`` (the server's process, metrics sampling),
``bare_process`` / ``bare_server`` (the floor), ``load`` (closed- and open-loop
generators in worker processes), ``payloads`` (request bytes per protocol),
``models`` (the scenarios' models), ``runner`` (run, compare), ``ramp`` (rate
ramps), ``sweep`` (batching grids against the controllers; ``batch_sim``
simulates them), ``prepare`` (starts and probes the server), ``measure`` (loads
it once), ``report`` / ``plots`` / ``targets`` (numbers, JSON, PNG),
``profiles`` / ``profile_server`` (server profiles), ``proc_counters`` (CPU,
wake-ups and syscalls per query).
"""
