"""One server per state folder: a second one on the same folder is refused before
it binds a port or starts a replica (both would start the same replicas, and
``clipper stop`` would signal whichever wrote ``server.pid`` last); once the
first stops, or dies, the folder is free again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clipper_core.errors import ClipperError
from clipper_core.server import BackgroundServer

REPO = Path(__file__).resolve().parents[2]


def _server(state: Path) -> BackgroundServer:
    return BackgroundServer(query_port=0, management_port=0, grpc_port=0, state_dir=str(state))


def test_a_second_server_on_one_state_folder_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with _server(state):
        with pytest.raises(ClipperError, match=rf"pid {os.getpid()}\) uses the state folder"):
            with _server(state):
                pass
        with _server(tmp_path / "other"):  # another folder is another server's
            pass
    with _server(state):  # stopped: free again
        pass


def test_the_folder_is_free_once_its_server_is_killed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    code = (
        "import sys, time\n"
        "from clipper_core.server import BackgroundServer\n"
        "with BackgroundServer(query_port=0, management_port=0, grpc_port=0,"
        f" state_dir={str(state)!r}):\n"
        "    print('up', flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        with pytest.raises(ClipperError, match=rf"pid {proc.pid}\)"):
            with _server(state):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    with _server(state):  # the kernel dropped the dead server's lock
        pass
