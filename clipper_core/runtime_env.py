"""Per-model runtime environments, client side: have the server build one, showing
its progress.

A model deployed with ``pkgs_to_install`` (or a requirements file) runs in a
virtual environment of its own, built and cached by the server's local container
manager (:mod:`clipper_core.managers.envs`).  A deployer asks for it with
:func:`build_runtime_env` (the management calls ``build_runtime_env``, then
``get_runtime_env`` with an offset) and prints pip's output as it comes.  What a
deployer records about its own environment is in
:mod:`clipper_core.deployers.requirements`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from clipper_core.errors import ClipperError
from clipper_core.requirements import FAILED, READY

if TYPE_CHECKING:
    from clipper_core.connection import ClipperConnection

__all__ = ["build_runtime_env"]

# -- client side: build with progress ------------------------------------------------------


def _print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def build_runtime_env(
    conn: ClipperConnection,
    requirements: Sequence[str],
    *,
    progress: Callable[[str], None] | None = _print_progress,
    timeout: float = 3600.0,
    poll_interval: float = 0.5,
) -> dict[str, Any]:
    """Have the server build (or find cached) an environment, showing its progress.

    Args:
        conn: A connection to the server.
        requirements: pip requirement lines.
        progress: Called with each line of the build log, prefixed with the short
            environment id (stderr by default; None: silent).
        timeout: Seconds to wait for the build.
        poll_interval: Seconds between two looks at the log.

    Returns:
        The ``runtime_env`` of a container spec: ``{"requirements", "env_id"}``.

    Raises:
        ClipperError: The build failed (with pip's last lines) or took too long.
    """
    reqs = list(requirements)
    state = conn._call("build_runtime_env", {"requirements": reqs})
    env_id = str(state["env_id"])
    if progress is not None and state.get("status") == READY and not state.get("log"):
        progress(f"[env {env_id[:8]}] ready (built before, {state.get('python')})")
    offset = 0
    pending = ""
    deadline = time.monotonic() + timeout
    while True:
        text = str(state.get("log") or "")
        offset = int(state.get("offset") or offset)
        if progress is not None and text:
            pending += text
            *lines, pending = pending.split("\n")
            for line in lines:
                progress(f"[env {env_id[:8]}] {line}")
        status = state.get("status")
        if status == READY and not text:
            break
        if status == FAILED and not text:
            raise ClipperError(f"building the model's environment failed: {state.get('error')}")
        if time.monotonic() > deadline:
            raise ClipperError(
                f"the model's environment {env_id} was not built within {timeout:g} s"
            )
        if not text:
            time.sleep(poll_interval)
        state = conn._call("get_runtime_env", {"env_id": env_id, "offset": offset}) or {}
        if not state:
            raise ClipperError(f"the server forgot the environment {env_id}")
    if progress is not None and pending:
        progress(f"[env {env_id[:8]}] {pending}")
    return {"requirements": reqs, "env_id": env_id}
