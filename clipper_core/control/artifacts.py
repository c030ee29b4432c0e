"""Where a deployed model's files go: the artifact store.

Today the one implementation keeps them in the server's state folder
(``<state_dir>/models/<name>/<version>/``), readable by the server's user only,
and the model record points at that path.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
from pathlib import Path
from typing import Any, Protocol

from clipper_core.errors import BadInput
from clipper_core.model_bundle import TAR, unpack_archive
from clipper_core.state_dir import make_private_dir, write_private_file


class ArtifactStore(Protocol):
    """Keeps the files of deployed model versions."""

    async def put(
        self, name: str, version: str, container: dict[str, Any], payload_b64: str
    ) -> dict[str, Any]:
        """Store a version's payload; return its container spec pointing at it."""
        ...

    async def remove(self, name: str, version: str) -> None:
        """Forget a version's files."""
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
        self, name: str, version: str, container: dict[str, Any], payload_b64: str
    ) -> dict[str, Any]:
        """Decode and write the payload (a pickled closure, or a tar of a model's
        folder, unpacked once for every replica to load).

        Raises:
            BadInput: The payload is not base64, or not a valid archive.
        """
        try:
            data = base64.b64decode(payload_b64, validate=True)
        except ValueError as exc:
            raise BadInput(f"model payload is not valid base64: {exc}") from None
        folder = self.folder(name, version)
        path = folder / str(container.get("filename", "model.pkl"))

        def write() -> str:
            make_private_dir(folder)
            write_private_file(path, data)
            if container.get("archive") != TAR:
                return str(path)
            return unpack_archive(path, path.with_name("model"), remove_archive=True)

        return {**container, "path": await asyncio.to_thread(write)}

    async def remove(self, name: str, version: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.folder(name, version), True)
