"""Where a deployed model's files go: the artifact store.

Today the one implementation keeps them in the server's state folder
(``<state_dir>/models/<name>/<version>/``), readable by the server's user only,
and the model record points at that path.  A replica on another host fetches the
payload as it was deployed (its *bundle*: a pickled closure, or the tar of a
model folder) from the management API, ``GET /admin/bundle/<name>/<version>``
(:meth:`LocalArtifactStore.open`, :func:`bundle_path`).
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote

from clipper_core.model_bundle import TAR, check_payload_filename, unpack_archive
from clipper_core.state_dir import make_private_dir, write_private_file

#: ``X-Clipper-Bundle-Kind``: ``closure`` (a pickle file) or ``folder`` (a tar).
BUNDLE_KIND_HEADER = "X-Clipper-Bundle-Kind"
#: ``X-Clipper-Bundle-SHA256``: the hex SHA-256 of the bundle's bytes.
BUNDLE_SHA256_HEADER = "X-Clipper-Bundle-SHA256"


@dataclass(frozen=True)
class Bundle:
    """A deployed version's payload, as a replica elsewhere fetches it.

    Attributes:
        data: The bytes deployed.
        kind: ``"closure"`` (a pickled model) or ``"folder"`` (a tar of its folder).
        sha256: Hex SHA-256 of ``data``.
    """

    data: bytes
    kind: Literal["closure", "folder"]
    sha256: str


def bundle_path(name: str, version: str, container: Mapping[str, Any]) -> str:
    """The management API path a replica fetches ``name:version``'s bundle at,
    pinned to the deployed payload's digest when the record has it."""
    path = f"/admin/bundle/{quote(name, safe='')}/{quote(version, safe='')}"
    digest = container.get("payload_sha256")
    return f"{path}?sha256={digest}" if isinstance(digest, str) and digest else path


class ArtifactStore(Protocol):
    """Keeps the files of deployed model versions."""

    async def put(
        self, name: str, version: str, container: dict[str, Any], payload: bytes
    ) -> dict[str, Any]:
        """Store a version's payload; return its container spec pointing at it."""
        ...

    async def remove(self, name: str, version: str) -> None:
        """Forget a version's files."""
        ...

    async def open(self, name: str, version: str, container: Mapping[str, Any]) -> Bundle | None:
        """The version's bundle (``container`` is its record's spec), or None when
        its files were not deployed through the store."""
        ...


class LocalArtifactStore:
    """Model files in a private folder of this host.

    Args:
        root: ``<state_dir>/models``.
    """

    def __init__(self, root: Path) -> None:
        self._root = root

    def folder(self, name: str, version: str) -> Path:
        return self._root / name / version

    async def put(
        self, name: str, version: str, container: dict[str, Any], payload: bytes
    ) -> dict[str, Any]:
        """Write the payload's bytes (a pickled closure, or a tar of a model's
        folder, unpacked once for every replica to load; the tar stays, as the
        bundle that remote replicas fetch).

        Raises:
            BadInput: The payload is not a valid archive.
        """
        folder = self.folder(name, version)
        path = folder / check_payload_filename(container.get("filename", "model.pkl"))

        def write() -> str:
            make_private_dir(folder)
            write_private_file(path, payload)
            if container.get("archive") != TAR:
                return str(path)
            return unpack_archive(path, path.with_name("model"))

        return {**container, "path": await asyncio.to_thread(write)}

    async def remove(self, name: str, version: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.folder(name, version), True)

    async def open(self, name: str, version: str, container: Mapping[str, Any]) -> Bundle | None:
        """The payload file written by :meth:`put` (None for a version deployed
        without a payload, or whose tar predates keeping it)."""
        folder = self.folder(name, version)
        path = folder / str(container.get("filename", "model.pkl"))
        if path.parent != folder or container.get("path") is None:
            return None
        kind: Literal["closure", "folder"] = (
            "folder" if container.get("archive") == TAR else "closure"
        )

        def read() -> Bundle | None:
            try:
                data = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                return None
            return Bundle(data, kind, hashlib.sha256(data).hexdigest())

        return await asyncio.to_thread(read)
