"""One spawned replica process: its pipes on the loop, its exit seen through a pidfd.

Used by :class:`clipper_core.managers.supervisor.ProcessSupervisor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import IO

logger = logging.getLogger("clipper_core.process_manager")

# Longer stdout/stderr lines are truncated.
_MAX_LINE = 64 * 1024
# At most this much of a pipe is read per loop turn.
_READ_SIZE = 64 * 1024


class _ChildOutput:
    """Splits a child's stdout and stderr into lines and reports its exit."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.exited: asyncio.Future[None] = loop.create_future()
        self.pipes_closed: asyncio.Future[None] = loop.create_future()
        self._on_line: Callable[[int, str], None] | None = None
        self._early: list[tuple[int, bytes]] = []  # lines read before attach()
        self._buffers = {1: bytearray(), 2: bytearray()}
        self._skipping = {1: False, 2: False}  # inside an over-long line
        self._open = {1, 2}

    def attach(self, on_line: Callable[[int, str], None]) -> None:
        """Start delivering lines (those read so far first) to ``on_line(fd, line)``."""
        self._on_line = on_line
        early, self._early = self._early, []
        for fd, raw in early:
            self._deliver(fd, raw)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        buf = self._buffers[fd]
        buf += data
        while (end := buf.find(b"\n")) >= 0:
            line = bytes(buf[:end])
            del buf[: end + 1]
            if self._skipping[fd]:
                self._skipping[fd] = False
            else:
                self._deliver(fd, line)
        if len(buf) > _MAX_LINE:
            if not self._skipping[fd]:
                self._deliver(fd, bytes(buf[:_MAX_LINE]) + b" [line truncated]")
                self._skipping[fd] = True
            buf.clear()

    def pipe_connection_lost(self, fd: int) -> None:
        if fd not in self._open:
            return
        buf = self._buffers[fd]
        if buf and not self._skipping[fd]:
            self._deliver(fd, bytes(buf))
        buf.clear()
        self._open.discard(fd)
        if not self._open and not self.pipes_closed.done():
            self.pipes_closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def _deliver(self, fd: int, raw: bytes) -> None:
        if self._on_line is None:
            self._early.append((fd, raw))
            return
        try:
            self._on_line(fd, raw.decode(errors="replace").rstrip("\r"))
        except Exception:
            logger.exception("handling a line of a replica's output failed")


class _PipeReader:
    """Feeds one of a child's pipes to its :class:`_ChildOutput`.

    Read with ``loop.add_reader`` and ``os.read``, so that the pipe's file object
    stays the one owner of the descriptor and closes it once.  uvloop's
    ``connect_read_pipe`` hands the same number to libuv and keeps the file
    object, and both close it (MagicStack/uvloop#763): a number that another
    thread reused in between (a client's socket, a test's connection, the state
    database) lost its file.  A poison-input test saw exactly that: a client socket
    closed under it while crashed replicas' pipes were closed.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, output: _ChildOutput, name: int, pipe: IO[bytes]
    ) -> None:
        self._loop = loop
        self._output = output
        self._name = name  # 1 or 2: which of the child's outputs
        self._pipe: IO[bytes] | None = pipe
        self._fd = pipe.fileno()
        os.set_blocking(self._fd, False)
        loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # treated as the end
        if data:
            self._output.pipe_data_received(self._name, data)
        else:
            self.close()

    def close(self) -> None:
        """Stop reading and close the pipe (once); the output hears of its end."""
        pipe, self._pipe = self._pipe, None
        if pipe is None:
            return
        if not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        pipe.close()
        self._output.pipe_connection_lost(self._name)


def _popen(argv: list[str], env: dict[str, str], cwd: str | None) -> subprocess.Popen[bytes]:
    # Called on the loop on purpose: it blocks only for a vfork and the exec of the
    # launcher, and a thread would be worse (PR_SET_PDEATHSIG fires when the thread
    # that forked exits).
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        start_new_session=True,
        close_fds=True,
    )


class _Child:
    """One spawned process: the Popen, its pipes on the loop, and exit detection.

    Spawned with :class:`subprocess.Popen` rather than the loop's subprocess support:
    without a preexec_fn CPython forks (vfork) and execs without running any Python
    in the child, whereas uvloop runs the interpreter's at-fork hooks there (grpc's
    and threading's: observed to spin for ever in a child of a threaded server).
    The exit is seen through a pidfd on the loop (a thread where there is none), not
    through the pipes, which a helper process may keep open; and since only we reap
    the process, its pid cannot be reused while ``returncode`` is None.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid: int = popen.pid
        self.output = _ChildOutput(loop)
        self.exited = self.output.exited
        self.pipes_closed = self.output.pipes_closed
        self._loop = loop
        self._pipes: list[_PipeReader] = []
        self._pidfd: int | None = None

    @classmethod
    async def spawn(cls, argv: list[str], env: dict[str, str], cwd: str | None) -> _Child:
        """Start ``argv`` in a new session with stdout and stderr piped to us.

        Raises:
            OSError, subprocess.SubprocessError, ValueError: It could not start.
        """
        loop = asyncio.get_running_loop()
        popen = _popen(argv, env, cwd)
        child = cls(loop, popen)
        try:
            child._watch_exit()
            for name, pipe in ((1, popen.stdout), (2, popen.stderr)):
                assert pipe is not None
                child._pipes.append(_PipeReader(loop, child.output, name, pipe))
        except BaseException:
            child.close()
            raise
        return child

    @property
    def returncode(self) -> int | None:
        """The exit status once reaped (negative: killed by that signal)."""
        return self.popen.returncode

    def signal(self, sig: signal.Signals) -> None:
        """Signal the process group the replica leads (its own session), so that
        helpers it spawned go too; only while the leader is not reaped, so that the
        id cannot belong to anyone else."""
        if self.returncode is not None:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def close(self) -> None:
        """Release the pipes and the pidfd; a process that still runs is killed
        and reaped by a thread.  Safe to call twice."""
        for reader in self._pipes:
            reader.close()
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()  # never handed to a reader
        self._stop_watching_pidfd()
        if self.returncode is None:
            self.signal(signal.SIGKILL)
            threading.Thread(target=self.popen.wait, name=f"reap {self.pid}", daemon=True).start()

    def _watch_exit(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfd (Linux < 5.3): a thread waits
            threading.Thread(
                target=self._wait_in_thread, name=f"wait {self.pid}", daemon=True
            ).start()
            return
        self._loop.add_reader(self._pidfd, self._on_pidfd_readable)

    def _on_pidfd_readable(self) -> None:
        self._stop_watching_pidfd()
        self._end_group()
        self.popen.poll()  # reaps it
        self.output.process_exited()

    def _end_group(self) -> None:
        """Kill what the exited replica left in its process group (helpers of a
        replica that crashed: they would outlive it, restarts included).  Only
        before the replica is reaped: until then its group id cannot be anyone
        else's."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    def _stop_watching_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _wait_in_thread(self) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
            self._end_group()
        self.popen.wait()
        with contextlib.suppress(RuntimeError):  # the loop is closed
            self._loop.call_soon_threadsafe(self.output.process_exited)
