"""Keep the cyclic garbage collector off what the server holds for its lifetime.

At start-up a frontend builds tens of thousands of objects that live as long as
it does (modules, routes, the data plane, gRPC and protobuf state: ~47,000 in
peerbench's server).  Under load, each request's objects that are alive when a
young collection runs get promoted, and once enough have been, the collector
runs a full collection, which rescans all of those long-lived objects: 10-25 ms
with the event loop stopped.  The OIP path keeps enough objects alive per
request to trigger one every half second at 32 clients (p99 11-17 ms against
the REST path's 2.6-4 ms).  Moving the start-up objects into the permanent
generation (``gc.freeze``) leaves a full collection only what came since (0.3 ms
measured there).  Objects frozen are still freed by reference counting; only a
cycle among them waits for :func:`thaw` (the server's stop).
See docs/benchmarks/per-request-cost.md ("Full collections on the OIP path").
"""

from __future__ import annotations

import gc

__all__ = ["freeze_long_lived", "thaw"]


def freeze_long_lived() -> None:
    """Collect what is garbage now, then exempt every object still alive from the
    cyclic collector."""
    gc.collect()
    gc.freeze()


def thaw() -> None:
    """Give the frozen objects back to the collector (their cycles can go)."""
    gc.unfreeze()
