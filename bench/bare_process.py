"""``BareProcess``: ``bench.bare_server`` in its own process, the floor that an
HTTP (or gRPC) server on this machine costs at all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.serverproc import REPO_ROOT, free_port


class BareProcess:
    """``bench.bare_server``: a fixed reply over HTTP/1.1 (or gRPC) on uvloop."""

    def __init__(self, kind: str, reply: bytes, content_type: str = "application/json") -> None:
        self.kind = kind
        self.content_type = content_type
        self.reply_file = Path(tempfile.mkstemp(prefix="bench-bare-reply-")[1])
        self.reply_file.write_bytes(reply)
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.bare_server",
                "--kind",
                self.kind,
                "--port",
                str(self.port),
                "--reply-file",
                str(self.reply_file),
                "--content-type",
                self.content_type,
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.stop()
            raise RuntimeError(f"bare server did not start: {line!r}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_s(self) -> float | None:
        """CPU seconds (user + system, all threads) the bare server has used so far."""
        if self.proc is None:
            return None
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        self.reply_file.unlink(missing_ok=True)

    def __enter__(self) -> BareProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
