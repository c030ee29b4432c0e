"""Load generators on uvloop: closed loop and open loop, over HTTP/1.1 or gRPC.

Each generator runs in a worker process of its own (``run_workers``), apart from
the server and from the orchestrator that polls the server's metrics.

* **closed loop**: ``concurrency`` clients, each with one keep-alive connection,
  send the next request as soon as the previous answer arrives.  Latency is
  measured from the send.
* **open loop**: requests are *scheduled* ahead of time (Poisson arrivals at
  ``rate``, or Poisson bursts of ``burst_size`` simultaneous requests) and sent on
  any idle keep-alive connection of a pool, which grows up to
  ``max_connections``.  Latency is measured from the **scheduled** time, so a slow
  server (or a late generator) cannot hide its queueing delay (no coordinated
  omission); how late the sends were is reported separately as ``lag``.

The HTTP client is a bare ``asyncio.Protocol`` with httptools' response parser and
pre-built request bytes: per request it writes one buffer, parses one response and
appends four numbers.  The gRPC client sends pre-serialized bytes with identity
serializers on ``grpc.aio`` channels.

Every run is bounded in time (``duration_s`` after ``warmup_s``) and optionally in
count (``max_requests``); every request has a timeout.  Loopback only.

Result codes: an HTTP status (200 is success; gRPC OK is also recorded as 200), or
a negative code for a failure without a status (see ``ERROR_KINDS``; a gRPC status
``s`` is ``-100 - s``).

Modules: ``common`` (result codes, schedules, recorder), ``http`` and ``grpc`` (the
generators), ``workers`` (one run, worker processes, merging).
"""

from __future__ import annotations

from bench.load.common import (
    ERR_CONNECT,
    ERR_PARSE,
    ERR_RESET,
    ERR_TIMEOUT,
    ERR_UNFINISHED,
    ERROR_KINDS,
    GRPC_BASE,
    LoadRun,
    Recorder,
    arrival_times,
    error_kind,
    payload_order,
)
from bench.load.grpc import GrpcLoad
from bench.load.http import (
    HttpClosedLoop,
    HttpConnection,
    HttpOpenLoop,
    http_connect,
    http_exchange,
)
from bench.load.workers import merge, run_load, run_workers

__all__ = [
    "ERROR_KINDS",
    "ERR_CONNECT",
    "ERR_PARSE",
    "ERR_RESET",
    "ERR_TIMEOUT",
    "ERR_UNFINISHED",
    "GRPC_BASE",
    "GrpcLoad",
    "HttpClosedLoop",
    "HttpConnection",
    "HttpOpenLoop",
    "LoadRun",
    "Recorder",
    "arrival_times",
    "error_kind",
    "http_connect",
    "http_exchange",
    "merge",
    "payload_order",
    "run_load",
    "run_workers",
]
