"""Benchmarks: pytest-benchmark microbenchmarks of the Cython structures
(``test_bench_*.py``, ``make bench``) and the end-to-end load harness
(``python -m bench``; see docs/guides/benchmarks.md).

Harness modules: ``__main__`` (CLI), ``scenario`` (TOML scenarios in
``scenarios/``), ``serverproc`` (server / bare-server processes, metrics sampling),
``load`` (closed- and open-loop generators in worker processes), ``payloads``
(request bytes per protocol), ``models`` (the scenarios' models), ``runner`` (run,
compare, ramp, sweep; ``prepare`` starts and probes the server, ``measure`` loads
it once), ``report`` / ``plots`` / ``targets`` (numbers, JSON, PNG),
``profiles`` / ``profile_server`` (server profiles), ``bare_server`` (the floor).
"""
