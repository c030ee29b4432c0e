"""The process of one query worker (``python -m clipper_core.query_worker``).

Started by the primary's :class:`~clipper_core.frontend_workers.FrontendWorkers`:
it reads its settings as one JSON line on stdin, runs a ``ClipperServer`` on
them (query ports only, bound with ``SO_REUSEPORT``), writes one JSON line on
stdout once it serves, and stops gracefully on SIGTERM, when its parent dies
(``PR_SET_PDEATHSIG``), or when stdin, the primary's pipe, closes.  It stays in
the primary's session and process group (one scheduling group, like the
primary's own threads) and ignores SIGINT, which the primary handles for it.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import sys

#: ``prctl`` option: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM when the parent exits (Linux), and exit now
    if it already has (it may have died before the request was made)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        raise SystemExit(f"query worker: its server (pid {parent}) is gone")


def main() -> int:
    parent = os.getppid()
    die_with_parent(parent)
    spec = json.loads(sys.stdin.buffer.readline())

    import uvloop

    from clipper_core.config import ServerConfig
    from clipper_core.logs import configure_logging
    from clipper_core.server import ClipperServer

    configure_logging(spec["log_level"], spec["log_format"], worker=spec["config"]["worker_id"])
    server = ClipperServer(ServerConfig(**spec["config"]))

    def on_started(srv: ClipperServer) -> None:
        assert srv.listeners is not None and srv.listeners.direct is not None
        ready = {"pid": os.getpid(), "direct_port": srv.listeners.direct.port}
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        os.dup2(2, 1)  # nothing else may fill the pipe nobody reads any more
        loop = asyncio.get_running_loop()
        # Ctrl-C in a terminal reaches the whole process group; the primary stops
        # its workers in order (SIGTERM), so a worker leaves SIGINT to it.
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, signal.SIG_IGN)

        def on_stdin() -> None:
            if not os.read(0, 4096):  # EOF: the primary is gone
                loop.remove_reader(0)
                srv.request_shutdown()

        loop.add_reader(0, on_stdin)

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(server.run_forever(on_started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
