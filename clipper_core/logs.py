"""Structured logging: one record per event worth knowing, as JSON lines or text.

Events are ordinary ``logging`` records with two extras, ``event`` (a short
snake_case name such as ``replica_exited``) and ``fields`` (a dict of values), so
they go through whatever handlers the embedding program set up.  ``clipper serve``
installs :func:`configure_logging`, which writes them as one JSON object per line
(``--log-format json``, the default) or as readable text (``--log-format text``)::

    {"ts": "2025-01-01T12:00:00.123Z", "level": "warning", "logger": "clipper_core.server",
     "event": "replica_exited", "msg": "replica 0 of m:1 exited: exit code 3",
     "model": "m", "version": "1", "replica": "0", "exit_code": 3, "stderr_tail": "..."}

Records without an event (plain ``log.info(...)``) come out with ``"event": "log"``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import orjson

LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error")

_CORE_KEYS = frozenset({"ts", "level", "logger", "event", "msg"})
_ACCESS_LOGGER = "clipper_core.http.access"
_ACCESS_FIELDS = ("method", "path", "http_version", "status", "bytes")

server_log = logging.getLogger("clipper_core.server")


def log_event(
    logger: logging.Logger,
    event: str,
    message: str,
    *,
    level: int = logging.INFO,
    **fields: Any,
) -> None:
    """Log ``message`` as the structured event ``event`` with ``fields``."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", message, extra={"event": event, "fields": fields})


class RateLimiter:
    """Lets one event per key through every ``interval`` seconds (loop thread only)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        if len(self._last) > 10_000:  # keys are app names; bound it anyway
            self._last.clear()
        self._last[key] = now
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    if isinstance(fields, dict):
        return fields
    if record.name == _ACCESS_LOGGER and isinstance(record.args, tuple):
        if len(record.args) == len(_ACCESS_FIELDS):
            return dict(zip(_ACCESS_FIELDS, record.args, strict=True))
    return {}


def _event(record: logging.LogRecord) -> str:
    event = getattr(record, "event", None)
    if isinstance(event, str):
        return event
    return "http_access" if record.name == _ACCESS_LOGGER else "log"


def _timestamp(created: float) -> str:
    secs = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{secs}.{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, event, msg, then the fields
    (and ``worker``, in a query worker of ``--workers N``: which process said it)."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": _event(record),
            "msg": record.getMessage(),
        }
        if self.worker is not None:
            doc["worker"] = self.worker
        for key, value in _fields(record).items():
            doc[key if key not in _CORE_KEYS else f"field_{key}"] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: msg [event] key=value ...``; multi-line values indented."""

    def __init__(self, worker: int | None = None) -> None:
        who = "" if worker is None else f"worker {worker} "
        super().__init__(f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        # Text a client chose (a request path, a replica id) must not start a line
        # of its own: a record's later lines are indented, control characters
        # escaped, so a forged "2026-... ERROR ..." line cannot be told apart.
        line = super().format(record).translate(_ESCAPES).replace("\n", "\n    ")
        event = getattr(record, "event", None)
        fields = getattr(record, "fields", None)
        if not isinstance(fields, dict) or not isinstance(event, str):
            return line
        tail: list[str] = []
        extra = [f"[{event}]"]
        for key, value in fields.items():
            text = str(value).translate(_ESCAPES)
            if "\n" in text:
                tail.append(f"  {key}:\n" + "\n".join(f"    {ln}" for ln in text.split("\n")))
            else:
                extra.append(f"{key}={text}")
        return " ".join([line, *extra]) + ("\n" + "\n".join(tail) if tail else "")


#: Control characters (a newline and a tab excepted) and the line breaks of
#: Unicode, written as escapes in text logs.
_ESCAPES = {
    c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    for c in (*range(0x20), 0x7F, 0x85, 0x2028, 0x2029)
    if c not in (0x09, 0x0A)
}


def configure_logging(
    level: str = "info",
    fmt: str = "json",
    stream: IO[str] | None = None,
    worker: int | None = None,
) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) as JSON lines or text;
    ``worker``: this is query worker N of ``--workers``, and each line says so.

    Replaces the root logger's handlers; returns the handler installed.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, not {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(worker) if fmt == "json" else TextFormatter(worker))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
