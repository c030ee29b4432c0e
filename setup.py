"""Build the Cython extensions in ``ext/`` as ``clipper_core._ext.*``.

``clipper_core/_ext`` is a symlink to ``../ext``.  Cython finds a ``.pxd`` by the
module's qualified name, so the sources are compiled through that path: the
compiler then sees ``clipper_core/_ext/<name>.pyx`` inside real packages, names the
module ``clipper_core._ext.<name>``, and resolves ``cimport clipper_core._ext.x``
to ``ext/x.pxd``.  (A ``package_dir`` mapping of ``ext/`` would compile the same
files under the wrong name and silently skip their ``.pxd`` files.)

``CLIPPER_CYTHON_DEBUG=1`` builds with bounds checks, wraparound, line tracing
(for coverage and profilers) and writes Cython's annotated HTML next to each
source.
"""

from __future__ import annotations

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent
EXT_PACKAGE = "clipper_core._ext"
EXT_DIR = Path("clipper_core") / "_ext"  # the symlink to ext/, relative to HERE

DEBUG = os.environ.get("CLIPPER_CYTHON_DEBUG", "") not in ("", "0")

COMPILER_DIRECTIVES: dict[str, object] = {
    "language_level": 3,
    "embedsignature": True,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "linetrace": DEBUG,
    "profile": False,
}

MACROS: list[tuple[str, str | None]] = []
if DEBUG:
    # Line tracing only takes effect when the C code is compiled with it too.
    MACROS.append(("CYTHON_TRACE_NOGIL", "1"))
    MACROS.append(("CYTHON_TRACE", "1"))

# -ffp-contract=off: no fused multiply-add, so the extensions compute bit-for-bit
# what their pure-Python twins compute on every architecture.
CFLAGS = ["-O0", "-g", "-ffp-contract=off"] if DEBUG else ["-O2", "-ffp-contract=off"]


def _extensions() -> list[Extension]:
    exts = []
    # CLIPPER_EXT_ONLY=a,b builds only the named extensions (handy while one is edited).
    only = {n for n in os.environ.get("CLIPPER_EXT_ONLY", "").split(",") if n}
    for pyx in sorted((HERE / "ext").glob("*.pyx")):
        name = pyx.stem
        if only and name not in only:
            continue
        exts.append(
            Extension(
                f"{EXT_PACKAGE}.{name}",
                sources=[str(EXT_DIR / f"{name}.pyx")],
                define_macros=MACROS,
                extra_compile_args=CFLAGS,
            )
        )
    return exts


def _mode_changed() -> bool:
    # Cython only regenerates C when a source is newer than it, so after a debug
    # build a release build would reuse the debug C (and the reverse): remember
    # the last mode and force regeneration when it changes.
    marker = HERE / "build" / "cython-mode"
    mode = "debug" if DEBUG else "release"
    previous = marker.read_text() if marker.exists() else None
    if previous != mode:
        marker.parent.mkdir(exist_ok=True)
        marker.write_text(mode)
    return previous is not None and previous != mode


setup(
    ext_modules=cythonize(
        _extensions(),
        compiler_directives=COMPILER_DIRECTIVES,
        include_path=[str(HERE)],
        annotate=DEBUG,
        force=DEBUG or _mode_changed(),
    ),
)
