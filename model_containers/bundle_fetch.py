"""Fetch the model bundle from the frontend's management API (``--bundle-url``).

A replica on another host shares no disk with the frontend: at start it GETs
its model version's bundle, ``<management URL>/admin/bundle/<model>/<version>``,
with ``Authorization: Bearer <replica token>``, into a private temporary folder
of its own, checks its SHA-256, and loads the model from there.  The digest to
check is the URL's ``sha256=`` parameter (pinned by whoever started the replica),
else the answer's ``X-Clipper-Bundle-SHA256`` header.  A bundle is a pickled
closure (``X-Clipper-Bundle-Kind: closure``: loaded as ``--closure``) or the tar
of a model folder (``folder``: unpacked, loaded as ``--model-path``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from model_containers.registration import frontend_opener

log = logging.getLogger("model_containers")

KIND_HEADER = "x-clipper-bundle-kind"
SHA256_HEADER = "x-clipper-bundle-sha256"


class BundleError(Exception):
    """The bundle could not be fetched, or is not the one expected."""


@dataclass(frozen=True)
class Bundle:
    """A fetched bundle.

    Attributes:
        kind: ``"closure"`` or ``"folder"``.
        path: The pickle file, or the unpacked folder.
        folder: The private temporary folder holding it (removed by :meth:`remove`).
        sha256: The digest checked.
    """

    kind: str
    path: str
    folder: str
    sha256: str

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def fetch_bundle(
    url: str,
    token: str,
    *,
    timeout: float = 60.0,
    ca_file: str | None = None,
    stopping: threading.Event | None = None,
) -> Bundle:
    """Download, check and unpack the bundle at ``url``.

    Connection errors and 5xx answers are retried (the frontend may be starting)
    until ``timeout`` seconds have passed; a 4xx answer is final.

    Args:
        url: The bundle's URL (``http(s)://host:port/admin/bundle/<m>/<v>[?sha256=...]``).
        token: The model version's replica token.
        timeout: Seconds to keep retrying.
        ca_file: The CA of the frontend's HTTPS certificate (default: the system's).
        stopping: Set to give up early.

    Raises:
        BundleError: Refused (a wrong token: HTTP 401), unreachable within
            ``timeout``, a digest mismatch, or a broken archive.
    """
    parts = urlsplit(url)
    pinned = parse_qs(parts.query).get("sha256", [""])[0].lower()
    if parts.scheme == "http" and not pinned:
        # Over plain HTTP whoever is on the path could serve other code with a
        # matching digest header: only a digest fixed in the URL proves the bytes.
        raise BundleError(
            f"{url}: over plain http the bundle's SHA-256 must be pinned in the URL"
            " (?sha256=..., as get_replica_token's bundle_path gives it), or use https"
        )
    data, headers = _download(url, token, timeout, ca_file, stopping)
    announced = (headers.get(SHA256_HEADER) or "").lower()
    expected = pinned or announced
    if not expected:
        raise BundleError(f"{url}: no SHA-256 to check the bundle against")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected or (pinned and announced and announced != pinned):
        raise BundleError(
            f"the bundle from {url} is not the one expected: its SHA-256 is {actual},"
            f" expected {expected}"
            + (f" (the frontend announced {announced})" if announced else "")
        )
    kind = headers.get(KIND_HEADER) or "closure"
    if kind not in ("closure", "folder"):
        raise BundleError(f"{url}: unknown bundle kind {kind!r}")
    folder = tempfile.mkdtemp(prefix="clipper-bundle-")  # 0700, ours alone
    try:
        path = _store(Path(folder), kind, data)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    log.info("bundle %s (%s, %d bytes) unpacked into %s", url, kind, len(data), path)
    return Bundle(kind, path, folder, actual)


def _store(folder: Path, kind: str, data: bytes) -> str:
    if kind == "closure":
        path = folder / "model.pkl"
        path.write_bytes(data)
        os.chmod(path, 0o600)
        return str(path)
    archive, target = folder / "model.tar", folder / "model"
    archive.write_bytes(data)
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            # The "data" filter refuses links, devices and members outside target.
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"the bundle is not a valid model folder archive: {exc}") from None
    finally:
        archive.unlink(missing_ok=True)
    return str(target)


def _download(
    url: str,
    token: str,
    timeout: float,
    ca_file: str | None,
    stopping: threading.Event | None,
) -> tuple[bytes, dict[str, str]]:
    opener = frontend_opener(ca_file)
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + timeout
    delay, attempt = 0.1, 0
    while True:
        attempt += 1
        request = urllib.request.Request(url, headers=headers, method="GET")
        try:
            with opener.open(request, timeout=min(30.0, max(timeout, 0.1))) as response:
                return response.read(), {k.lower(): v for k, v in response.headers.items()}
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace").strip()
            if exc.code == 401:
                raise BundleError(
                    f"{url} refused the bundle token (HTTP 401): {text}; is --bundle-token-file"
                    " this model version's bundle_token (get_replica_token)?"
                ) from None
            if 400 <= exc.code < 500:
                raise BundleError(f"{url} refused the bundle: HTTP {exc.code}: {text}") from None
            last_error = f"HTTP {exc.code}: {text}"
        except (urllib.error.URLError, OSError) as exc:
            last_error = str(getattr(exc, "reason", exc))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BundleError(
                f"could not fetch the bundle from {url} within {timeout:g} s ({attempt}"
                f" attempts); last error: {last_error}"
            )
        log.info("bundle fetch attempt %d failed (%s); retrying", attempt, last_error)
        if stopping is not None and stopping.wait(min(delay, remaining)):
            raise BundleError("stopped while fetching the bundle")
        if stopping is None:
            time.sleep(min(delay, remaining))
        delay = min(delay * 2, 2.0)
