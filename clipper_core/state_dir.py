"""The server's state folder: who may read it, and the management token in it.

The folder holds the store, the deployed models' files (pickled code among
them) and the generated management token, so it is made readable by its owner
only (0700, files 0600).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import weakref
from pathlib import Path

from clipper_core.auth import ADMIN_TOKEN_ENV, NO_ADMIN_TOKEN_ENV, load_or_create_admin_token
from clipper_core.config import ServerConfig
from clipper_core.errors import BadInput, Conflict
from clipper_core.logs import log_event

log = logging.getLogger("clipper_core.server")

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) readable by its owner only; an
    existing folder of ours that others can read is tightened.

    Raises:
        BadInput: The folder belongs to another user (not root): they could read
            the token and plant the models the server loads (a ``/tmp/a`` made
            first by someone else).
    """
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=PRIVATE_DIR, exist_ok=True)
    st = path.stat()
    if st.st_uid not in (os.geteuid(), 0):
        raise BadInput(
            f"the state folder {path} belongs to another user (uid {st.st_uid}; this server"
            f" runs as uid {os.geteuid()}), who could read its token and replace the models"
            " it loads; use a folder of your own (--state-dir)"
        )
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == os.geteuid() and mode & 0o077:
        path.chmod(PRIVATE_DIR)
    elif st.st_uid != os.geteuid() and mode & 0o022 and not mode & stat.S_ISVTX:
        # Root's, and we cannot tighten it: others could rename our store and
        # models away at any time and put theirs in their place.
        raise BadInput(
            f"the state folder {path} is root's and others may write it (mode {mode:o},"
            " no sticky bit): anyone could replace the store or the models in it; use a"
            " folder of your own (--state-dir)"
        )


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, readable by its owner only (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, PRIVATE_FILE)  # an existing file keeps its mode on open


def prepare_state_dir(cfg: ServerConfig) -> None:
    """The state folder and its models folder, both private; nothing in the
    folder may belong to another user (see :func:`check_owned`)."""
    make_private_dir(Path(cfg.state_dir))
    check_owned(Path(cfg.state_dir))
    make_private_dir(cfg.models_dir())
    state_path = cfg.resolved_state_path()
    if state_path != ":memory:":
        make_private_dir(Path(state_path).parent)
    if state_path != ":memory:" and cfg.state_url is None:
        # 0600 before SQLite opens it (its -wal and -shm take its mode).
        with contextlib.suppress(FileExistsError):
            os.close(os.open(state_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
        for path in (state_path, f"{state_path}-wal", f"{state_path}-shm"):
            _check_owner(path)
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(path)
                if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
                    os.chmod(path, PRIVATE_FILE)


def check_owned(folder: Path) -> None:
    """Refuse a folder holding an entry of another user (root excepted): in a
    folder others may write (root's 0777 volume, say) they could have planted
    the store, whose model records name the code the replicas load.

    Raises:
        BadInput: Naming the entry and its owner.
    """
    for entry in os.scandir(folder):
        _check_owner(entry.path)


def _check_owner(path: str) -> None:
    try:
        uid = os.lstat(path).st_uid
    except FileNotFoundError:
        return
    if uid not in (os.geteuid(), 0):
        raise BadInput(
            f"{path} belongs to another user (uid {uid}; this server runs as uid"
            f" {os.geteuid()}), who could have planted it; remove it, or use a folder of"
            " your own"
        )


def resolve_admin_token(cfg: ServerConfig) -> str | None:
    """The token the management API will require, or None when the operator opted
    out.  Sets ``cfg.admin_token`` to a generated one on a start without one.

    Raises:
        BadInput: The token is empty, or both a token and the opt-out were given.
    """
    token = cfg.admin_token
    if token is not None and not token.strip():
        raise BadInput(
            f"the management token is empty (${ADMIN_TOKEN_ENV} or --admin-token): an empty"
            " token would leave the management API open; unset it to have one generated,"
            f" or set ${NO_ADMIN_TOKEN_ENV}=1 to run without one"
        )
    if cfg.insecure_no_admin_token:
        if token is not None:
            raise BadInput("a management token and insecure_no_admin_token exclude each other")
        log_event(
            log,
            "management_unauthenticated",
            f"INSECURE: the management API on {cfg.host}:{cfg.management_port} needs no"
            " token: every local process (and every user of this machine) can deploy and"
            f" run code through it; unset {NO_ADMIN_TOKEN_ENV} to require one",
            level=logging.WARNING,
        )
        return None
    if token is None:
        token = load_or_create_admin_token(cfg.state_dir)
        cfg.admin_token = token
        log_event(
            log,
            "management_token",
            f"management token in {Path(cfg.state_dir) / 'admin_token'} (the Python API and"
            " the CLI read it from there)",
        )
    return token.strip()


class StateLock:
    """An exclusive lock on ``<state folder>/server.lock`` for a server's life: two
    servers on one folder would each start the same replicas, and ``clipper stop``
    would signal whichever wrote ``server.pid`` last.  The kernel drops it when
    the process dies, however it dies.

    Raises:
        Conflict: Another server holds it (its pid is named).
    """

    def __init__(self, state_dir: Path) -> None:
        path = state_dir / "server.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise Conflict(
                f"another clipper_core server (pid {holder}) uses the state folder"
                f" {state_dir}: stop it, or give this one its own --state-dir (frontends"
                " that share state each have their own folder and one --state-url)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        # Closing the only descriptor drops the lock: at release, or when a server
        # whose start failed (never stopped) is collected.
        self._close = weakref.finalize(self, os.close, fd)

    def release(self) -> None:
        self._close()


def lock_state_dir(cfg: ServerConfig) -> StateLock | None:
    """The primary's lock on its state folder (query workers share their primary's)."""
    return None if cfg.is_query_worker() else StateLock(Path(cfg.state_dir))
