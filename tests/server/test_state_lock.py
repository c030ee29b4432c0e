"""One server per state folder: a second one on the same folder is refused before
it binds a port or starts a replica (both would start the same replicas, and
``clipper stop`` would signal whichever wrote ``server.pid`` last); once the
first stops, or dies, the folder is free again."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from clipper_core.auth import keep_private
from clipper_core.errors import BadInput, ClipperError
from clipper_core.server import BackgroundServer
from clipper_core.state_dir import make_private_dir

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


def test_a_failed_start_lets_its_folder_go(tmp_path: Path) -> None:
    # A start that failed after taking the folder's lock (here: its query port is
    # taken) kept it, so the next try in the same process was refused as
    # "another clipper_core server (pid <this one>)".
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        port = busy.getsockname()[1]
        failing = BackgroundServer(
            query_port=port, management_port=0, grpc_port=0, state_dir=str(tmp_path / "s")
        )
        with pytest.raises(Exception, match=str(port)):
            failing.start()
    finally:
        busy.close()
    # The failed one stopped what it began: it says so rather than seeming to start.
    with pytest.raises(ClipperError, match="was stopped"):
        failing.start()
    server = _server(tmp_path / "s")
    server.start()
    server.stop()


NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_a_state_folder_or_token_of_another_user_is_refused(tmp_path: Path) -> None:
    # A folder another user made first (/tmp/a, say) was used as it was: they
    # could plant the management token and the models the server loads.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chown(shared, NOBODY, NOBODY)
    with pytest.raises(ClipperError, match=r"belongs to another user \(uid 65534"):
        _server(shared).start()
    # A token file of another user in a folder of ours: they chose the secret.
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    (ours / "admin_token").write_text("planted-by-nobody-0123456789\n")
    os.chown(ours / "admin_token", NOBODY, NOBODY)
    with pytest.raises(ClipperError, match="admin_token belongs to another user"):
        _server(ours).start()
    # A store planted in a folder others may write (root's 0777 volume): its model
    # records name the code the replicas load.
    os.chown(ours / "admin_token", 0, 0)
    (ours / "state.sqlite3").write_bytes(b"")
    os.chown(ours / "state.sqlite3", NOBODY, NOBODY)
    with pytest.raises(ClipperError, match=r"state\.sqlite3 belongs to another user"):
        _server(ours).start()
    # Root's files and folders are trusted (a mounted volume, Kubernetes' emptyDir).
    os.chown(ours / "state.sqlite3", 0, 0)
    server = _server(ours)
    server.start()
    server.stop()
    assert (ours / "state.sqlite3").stat().st_mode & 0o077 == 0


def _as_nobody(action: Callable[[], object]) -> int:
    """Run ``action`` in a forked child acting as uid 65534; its exit status
    (0: it returned, 1: it raised, 2: it raised BadInput)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setegid(NOBODY)
            os.seteuid(NOBODY)
            action()
            code = 0
        except BadInput:
            code = 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_roots_folder_that_anyone_may_write_is_refused_to_another_user() -> None:
    # Root's 0777 volume, no sticky bit: a server of another user passed the
    # start's checks, and anyone could then rename its store and models away and
    # put theirs in their place.
    folder = Path(tempfile.mkdtemp(prefix="clipper-volume-"))
    try:
        folder.chmod(0o777)
        assert _as_nobody(lambda: make_private_dir(folder)) == 2
        folder.chmod(0o1777)  # sticky: nobody may rename what is not theirs
        assert _as_nobody(lambda: make_private_dir(folder)) == 0
        folder.chmod(0o755)  # root's, closed to the others: a mounted volume
        assert _as_nobody(lambda: make_private_dir(folder)) == 0
    finally:
        shutil.rmtree(folder)


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_a_secret_of_root_is_read_as_it_is_by_another_user() -> None:
    # A shared secret of root's (a mounted Kubernetes Secret, 0644) made a server
    # running as another user fail to start with a PermissionError: it chmod-ed it.
    folder = Path(tempfile.mkdtemp(prefix="clipper-secret-"))
    try:
        folder.chmod(0o755)
        secret = folder / "replica_secret"
        secret.write_text("ab" * 32 + "\n")
        secret.chmod(0o644)
        pid = os.fork()
        if pid == 0:  # the child acts as nobody: it only reads and checks
            code = 1
            try:
                os.setegid(NOBODY)
                os.seteuid(NOBODY)
                keep_private(secret)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert secret.stat().st_mode & 0o777 == 0o644
    finally:
        shutil.rmtree(folder)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a read-only mount of its own needs root and unshare",
)
def test_a_read_only_secret_of_ours_is_read_as_it_is(tmp_path: Path) -> None:
    # A root server's mounted secret (0644, read-only): tightening it raised
    # EROFS and the server did not start.
    mount = tmp_path / "ro"
    mount.mkdir()
    script = (
        f"mount -t tmpfs tmpfs {mount} && printf '%064d\\n' 7 > {mount}/replica_secret"
        f" && chmod 644 {mount}/replica_secret && mount -o remount,ro {mount}"
        f" && {sys.executable} -c 'from pathlib import Path;"
        " from clipper_core.auth import keep_private;"
        f' keep_private(Path("{mount}/replica_secret")); print("read")\''
    )
    res = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if "mount" in res.stderr and "permission denied" in res.stderr.lower():
        pytest.skip(f"no mount namespace here: {res.stderr.strip()}")
    assert res.returncode == 0 and res.stdout.strip() == "read", res.stderr
    assert "cannot be made private" in res.stderr
