"""A model directory travels to the server as one tar archive (the deploy payload)
and is unpacked once into the state dir, where the container loads it from.

Unpacking refuses members that would land outside the target folder, links,
and device files: the archive comes over the management API.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

from clipper_core.errors import BadInput

#: ``container["archive"]`` value of a tar payload.
TAR = "tar"


def check_payload_filename(name: object) -> str:
    """The file name a deploy's payload is stored under (``container.filename``),
    checked: a plain name, so that it lands in the version's own folder.

    Raises:
        BadInput: Empty, ``.``/``..``, or with a path separator or NUL.
    """
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or any(c in name for c in "/\\\0")
        or len(name) > 255
    ):
        raise BadInput(
            f"container field 'filename' must be a plain file name (no folders), got {name!r}"
        )
    return name


def pack_directory(folder: str | os.PathLike[str]) -> bytes:
    """The contents of ``folder`` as an uncompressed tar archive (paths relative).

    The same contents give the same bytes: members carry no modification time,
    owner or permission bits beyond executable or not, so that a model saved
    again (a re-run script) has the same digest and its deploy is "unchanged",
    not refused as changed code."""
    root = Path(folder)
    buf = io.BytesIO()

    def normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        executable = info.isdir() or info.mode & 0o111
        info.mode = 0o755 if executable else 0o644
        return info

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False, filter=normalised)
    return buf.getvalue()


def unpack_archive(
    archive: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    remove_archive: bool = False,
) -> str:
    """Unpack a tar payload into ``target`` (replaced if it exists); return its path.

    ``remove_archive`` deletes the archive once it is unpacked.

    Raises:
        BadInput: Not a tar archive, or a member escapes ``target`` or is not a
            plain file or folder.
    """
    dest = Path(target)
    tmp = dest.with_name(dest.name + ".unpacking")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    root = tmp.resolve()
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = tar.getmembers()
            for m in members:
                out = (root / m.name).resolve()
                if not (m.isfile() or m.isdir()):
                    raise BadInput(f"model archive member {m.name!r} is not a file or folder")
                if out != root and root not in out.parents:
                    raise BadInput(f"model archive member {m.name!r} escapes its folder")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:  # Python < 3.11.4: the checks above stand in for the filter
                tar.extractall(tmp, members=members)
    except tarfile.TarError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BadInput(f"the model payload is not a valid tar archive: {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    if remove_archive:
        Path(archive).unlink(missing_ok=True)
    return str(dest)
