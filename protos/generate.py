"""Compile the ``.proto`` sources into the committed Python packages.

Usage::

    make protos                              # the pinned generator, in build/protos-venv
    python -m protos.generate                # (re)write the generated code
    python -m protos.generate --check        # exit 1, naming the stale files, if the
                                             # committed code differs from a fresh build
    python -m protos.generate --check-sources  # any grpcio-tools: exit 1 if the committed
                                             # code does not describe the .proto sources

``protoc`` comes from ``grpcio-tools`` (``grpc_tools.protoc``), so the output depends
only on the grpcio-tools version.  That version is pinned in ``protos/requirements.txt``
(the oldest one whose code runs on every protobuf runtime pyproject.toml allows):
writing and ``--check`` refuse another one unless ``--any-generator`` is given.
``--check-sources`` compares what does not depend on the generator's version (the
file descriptors compiled from the sources; the grpcio version the code names), so
it means the same with any grpcio-tools.  Each proto is compiled with the
repository root as include path, so that it is registered in protobuf's descriptor
pool under a distinctive name (``protos/container.proto``, not ``container.proto``).
protoc writes absolute imports between generated modules (``from protos import
container_pb2``); they are rewritten to package-relative ones (``from . import
container_pb2``) so that the output package can live anywhere.

The ``.pyi`` stubs and ``*_pb2_grpc.py`` get a ``# mypy: ignore-errors`` first line
(protobuf itself is untyped; see ``_PYI_HEADER``).

Every file in an output package is produced here, ``__init__.py`` included, so
``--check`` also reports files that a fresh generation would not produce.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata, resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = "protos"
#: Pins the generator: one ``grpcio-tools==X`` line (``make protos`` installs from it).
REQUIREMENTS = REPO_ROOT / PROTO_DIR / "requirements.txt"

#: Output package (relative to the repository root) -> the protos compiled into it.
TARGETS: dict[str, tuple[str, ...]] = {
    # health.proto: the standard health service; clipper_core's replica client
    # imports it from here too (the container side must not import clipper_core).
    "model_containers/_proto": ("container.proto", "health.proto"),
    "clipper_core/_proto": ("oip_service.proto",),
}

#: Protos whose generated module builds its descriptors in a private pool instead
#: of protobuf's default one.  ``oip_service.proto`` declares the messages of the
#: ``inference`` package, as do other projects' generated modules (tritonclient's
#: ``grpc_service.proto``); two files defining one symbol in the default pool make
#: the second import fail, so the frontend's copy keeps to a pool of its own.
#: ``health.proto`` likewise declares ``grpc.health.v1``, as grpcio-health-checking's
#: ``grpc_health/v1/health.proto`` does, which a user may have imported.  The
#: wire format and the gRPC method paths do not depend on the pool.
PRIVATE_POOL_PROTOS: frozenset[str] = frozenset({"oip_service.proto", "health.proto"})

_INIT_TEMPLATE = '''"""Generated gRPC/protobuf code for {protos}.

DO NOT EDIT: regenerate with ``python -m protos.generate``; a test fails when this
package is stale.
"""
'''

_GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

# protobuf ships no type information, so under `mypy --strict` the stubs protoc
# writes fail (untyped import, classes subclassing Any), and so does the untyped
# *_pb2_grpc.py.  Silence errors *inside* those files only: callers still get the
# typed fields and constructors that the .pyi declares.
_PYI_HEADER = "# mypy: ignore-errors\n"


def _fix_imports(text: str) -> str:
    """Make imports of sibling generated modules package-relative."""
    # "from protos import container_pb2 as protos_dot_container__pb2"
    text = re.sub(
        rf"^from {PROTO_DIR} import (\w+_pb2) as (\w+)$",
        r"from . import \1 as \2",
        text,
        flags=re.MULTILINE,
    )
    # "from protos import container_pb2 as _container_pb2" (.pyi) uses the same form;
    # a bare "import protos.x_pb2" never appears, but keep the rewrite total.
    text = re.sub(
        rf"^import {PROTO_DIR}\.(\w+_pb2) as (\w+)$",
        r"from . import \1 as \2",
        text,
        flags=re.MULTILINE,
    )
    return text


def _use_private_pool(text: str) -> str:
    """Build a generated module's descriptors in a pool of its own."""
    fixed, count = re.subn(
        r"_descriptor_pool\.Default\(\)\.AddSerializedFile\(",
        "_descriptor_pool.DescriptorPool().AddSerializedFile(",
        text,
    )
    if count != 1:
        raise SystemExit("cannot find the default descriptor pool in protoc's output")
    return fixed


def pinned_generator() -> str:
    """Return the grpcio-tools version that ``protos/requirements.txt`` pins."""
    for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"\s*grpcio-tools\s*==\s*([\w.]+)\s*(#.*)?", line)
        if match:
            return match.group(1)
    raise SystemExit(f"{REQUIREMENTS} pins no grpcio-tools==X")


def installed_generator() -> str | None:
    """Return the installed grpcio-tools version, or None."""
    try:
        return metadata.version("grpcio-tools")
    except metadata.PackageNotFoundError:
        return None


def _protoc(proto: str, out_dir: Path, outputs: Sequence[str] | None = None) -> None:
    from grpc_tools import protoc

    well_known = resources.files("grpc_tools") / "_proto"
    if outputs is None:
        outputs = (
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
        )
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"-I{well_known}",
        *outputs,
        f"{PROTO_DIR}/{proto}",
    ]
    # protoc resolves the source relative to the include path; run from the root.
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed on {PROTO_DIR}/{proto} (exit status {rc})")


def generate() -> dict[str, dict[str, str]]:
    """Compile every target; return {output package: {file name: text}}."""
    result: dict[str, dict[str, str]] = {}
    for package, protos in TARGETS.items():
        files: dict[str, str] = {
            "__init__.py": _INIT_TEMPLATE.format(protos=", ".join(protos)),
        }
        with tempfile.TemporaryDirectory(prefix="clipper-protos-") as tmp:
            for proto in protos:
                _protoc(proto, Path(tmp))
            for path in sorted((Path(tmp) / PROTO_DIR).iterdir()):
                if path.name.endswith(_GENERATED_SUFFIXES):
                    text = _fix_imports(path.read_text(encoding="utf-8"))
                    stem = path.name.split("_pb2", 1)[0]
                    if f"{stem}.proto" in PRIVATE_POOL_PROTOS and path.name.endswith("_pb2.py"):
                        text = _use_private_pool(text)
                    if path.name.endswith((".pyi", "_pb2_grpc.py")):
                        text = _PYI_HEADER + text
                    files[path.name] = text
        result[package] = files
    return result


def _existing(package_dir: Path) -> dict[str, str]:
    if not package_dir.is_dir():
        return {}
    return {
        p.name: p.read_text(encoding="utf-8")
        for p in sorted(package_dir.iterdir())
        if p.is_file() and (p.name == "__init__.py" or p.name.endswith(_GENERATED_SUFFIXES))
    }


def check(fresh: dict[str, dict[str, str]]) -> list[str]:
    """Return one line per stale, missing or extra generated file."""
    problems: list[str] = []
    for package, files in fresh.items():
        committed = _existing(REPO_ROOT / package)
        for name in sorted(set(files) | set(committed)):
            rel = f"{package}/{name}"
            if name not in committed:
                problems.append(f"missing: {rel}")
            elif name not in files:
                problems.append(f"extra (not generated by any proto): {rel}")
            elif committed[name] != files[name]:
                diff = difflib.unified_diff(
                    committed[name].splitlines(),
                    files[name].splitlines(),
                    "committed",
                    "fresh",
                    lineterm="",
                    n=0,
                )
                first = next((line for line in list(diff)[2:] if line[:1] in "+-"), "")
                problems.append(f"stale: {rel}  (first difference: {first[:120]!r})")
    return problems


def _compiled_descriptor(proto: str) -> bytes:
    """The FileDescriptorProto that protoc builds from ``protos/<proto>``."""
    from google.protobuf import descriptor_pb2

    with tempfile.TemporaryDirectory(prefix="clipper-protos-") as tmp:
        out = Path(tmp) / "descriptors.bin"
        _protoc(proto, Path(tmp), outputs=(f"--descriptor_set_out={out}",))
        descriptors = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    file = descriptors.file[0]
    # protoc's Python generator embeds the descriptor without the derived
    # json_name of each field; drop them here too.
    messages = list(file.message_type)
    while messages:
        message = messages.pop()
        for field in (*message.field, *message.extension):
            field.ClearField("json_name")
        messages.extend(message.nested_type)
    for field in file.extension:
        field.ClearField("json_name")
    return bytes(file.SerializeToString(deterministic=True))


def _committed_descriptor(module: Path) -> bytes | None:
    """The serialized FileDescriptorProto that a generated ``*_pb2.py`` registers."""
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, bytes)
        ):
            return node.args[0].value
    return None


def check_sources() -> list[str]:
    """Return one line per committed module that does not match its ``.proto``.

    Independent of the installed grpcio-tools version: the file descriptors are
    compared as messages (protoc versions order their bytes differently), and the
    ``*_pb2_grpc.py`` files must name the pinned generator.
    """
    from google.protobuf import descriptor_pb2

    problems: list[str] = []
    pin = pinned_generator()
    for package, protos in TARGETS.items():
        for proto in protos:
            stem = proto.removesuffix(".proto")
            module = REPO_ROOT / package / f"{stem}_pb2.py"
            rel = f"{package}/{module.name}"
            committed = _committed_descriptor(module) if module.exists() else None
            if committed is None:
                problems.append(f"missing (or no serialized descriptor in): {rel}")
                continue
            parse = descriptor_pb2.FileDescriptorProto.FromString
            if parse(committed) != parse(_compiled_descriptor(proto)):
                problems.append(f"stale: {rel}  (does not describe {PROTO_DIR}/{proto})")
            grpc_module = REPO_ROOT / package / f"{stem}_pb2_grpc.py"
            grpc_rel = f"{package}/{grpc_module.name}"
            text = grpc_module.read_text(encoding="utf-8") if grpc_module.exists() else ""
            named = re.search(r"^GRPC_GENERATED_VERSION = '([\w.]+)'$", text, re.MULTILINE)
            if named is None or named.group(1) != pin:
                found = named.group(1) if named else "no version"
                problems.append(f"stale: {grpc_rel}  (generated by {found}, the pin is {pin})")
    return problems


def write(fresh: dict[str, dict[str, str]]) -> list[str]:
    """Write the generated packages; remove generated files no proto produces."""
    written: list[str] = []
    for package, files in fresh.items():
        package_dir = REPO_ROOT / package
        package_dir.mkdir(parents=True, exist_ok=True)
        for name in _existing(package_dir):
            if name not in files:
                (package_dir / name).unlink()
        for name, text in files.items():
            path = package_dir / name
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
                written.append(f"{package}/{name}")
    return written


def _report(problems: list[str], fix: str) -> int:
    if problems:
        print(f"generated protobuf code is stale; {fix}:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("generated protobuf code is up to date")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m protos.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if the committed code is stale"
    )
    mode.add_argument(
        "--check-sources",
        action="store_true",
        help="do not write; exit 1 if the committed code does not match the .proto sources "
        "(works with any grpcio-tools)",
    )
    parser.add_argument(
        "--any-generator",
        action="store_true",
        help="write or --check with the installed grpcio-tools even if it is not the pinned one",
    )
    args = parser.parse_args(argv)
    fix = "run `make protos`"
    if args.check_sources:
        return _report(check_sources(), fix)
    pin, installed = pinned_generator(), installed_generator()
    if installed != pin and not args.any_generator:
        print(
            f"the committed code is generated by grpcio-tools=={pin} ({REQUIREMENTS.name} "
            f"in {PROTO_DIR}/), this environment has {installed or 'no grpcio-tools'}: "
            "run `make protos` (it installs the pin in build/protos-venv), or "
            "`--check-sources`, which works with any version",
            file=sys.stderr,
        )
        return 2
    fresh = generate()
    if args.check:
        return _report(check(fresh), fix)
    written = write(fresh)
    for rel in written:
        print(f"wrote {rel}")
    if not written:
        print("generated protobuf code was already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
