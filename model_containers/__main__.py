"""``python -m model_containers``: run a model container (see ``model_containers.cli``)."""

from __future__ import annotations

import os
import sys

# gRPC's fork handlers are unsafe here: the server is already answering health
# checks while load() runs, and loaders fork with a preexec_fn (pyspark starts its
# Java gateway that way).  With the handlers on, gRPC skips them mid-call and can
# close descriptors the child's pipes then reuse: the Java gateway lost its stdin
# and exited in CI.  Nothing in a forked child of a container speaks gRPC.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from model_containers.cli import main

if __name__ == "__main__":
    sys.exit(main())
