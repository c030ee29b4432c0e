"""Registration of a container with the frontend's management API.

A container started anywhere (by a container manager or by hand) joins a model's
replicas by POSTing its address to ``<register-url>/admin/register_replica``.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("model_containers")

REGISTER_PATH = "/admin/register_replica"


@dataclass(frozen=True)
class RegistrationResult:
    ok: bool
    #: Why it failed (the frontend's answer for a 4xx); empty when ``ok``.
    message: str = ""
    #: True when the container was asked to stop while still trying.
    stopped: bool = False


def frontend_opener(ca_file: str | None = None) -> urllib.request.OpenerDirector:
    """An opener for the frontend's management API: no proxy (an ``http_proxy``
    meant for the internet must not capture it), and ``https`` verified against
    ``ca_file`` when given (else the system's CAs)."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ca_file is not None:
        context = ssl.create_default_context(cafile=ca_file)
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def register(
    base_url: str,
    payload: dict[str, Any],
    *,
    timeout: float = 30.0,
    token: str | None = None,
    stopping: threading.Event | None = None,
    ca_file: str | None = None,
) -> RegistrationResult:
    """POST ``payload`` as JSON to ``base_url + /admin/register_replica``.

    Connection errors and 5xx answers are retried with exponential backoff
    (0.1 s doubling to 2 s) until ``timeout`` seconds have passed, since the
    frontend may still be starting.  A 4xx answer is final.

    Args:
        base_url: The frontend's management address, e.g. ``http://127.0.0.1:1338``.
        payload: The registration document.
        timeout: Seconds to keep retrying.
        token: Sent as ``Authorization: Bearer <token>`` when given.
        stopping: Set by the container to abandon the attempt.
        ca_file: The CA of an ``https`` frontend's certificate (default: the system's).
    """
    url = base_url.rstrip("/") + REGISTER_PATH
    body = json.dumps(payload).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    opener = frontend_opener(ca_file)
    deadline = time.monotonic() + timeout
    delay = 0.1
    attempt = 0
    while True:
        attempt += 1
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with opener.open(request, timeout=min(5.0, max(timeout, 0.1))) as response:
                response.read()
            log.info("registered with %s (attempt %d)", url, attempt)
            return RegistrationResult(ok=True)
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace").strip()
            if 400 <= exc.code < 500:
                return RegistrationResult(
                    ok=False, message=f"{url} rejected the registration: HTTP {exc.code}: {text}"
                )
            last_error = f"HTTP {exc.code}: {text}"
        except (urllib.error.URLError, OSError) as exc:
            last_error = str(getattr(exc, "reason", exc))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return RegistrationResult(
                ok=False,
                message=f"could not register with {url} within {timeout:g} s "
                f"({attempt} attempts); last error: {last_error}",
            )
        log.info("registration attempt %d failed (%s); retrying", attempt, last_error)
        pause = min(delay, remaining)
        if stopping is not None:
            if stopping.wait(pause):
                return RegistrationResult(ok=False, message="stopped", stopped=True)
        else:
            time.sleep(pause)
        delay = min(delay * 2, 2.0)
