"""Declarative configuration on the client: read a file (TOML) that describes
models, apps and pipelines, load each model's code, and send it all to the
server's ``apply`` call (``clipper apply -f app.toml``,
``ClipperConnection.apply``).

A model's ``source`` names its code: ``FILE.py:NAME`` (a path relative to the
file) or ``module:NAME`` (imported with the file's folder on ``sys.path``); a
class is instantiated.  The object is pickled with cloudpickle, by value for a
``FILE.py`` (the code travels with the version), by reference for a module (the
container imports it).  ``source_sha256`` is the SHA-256 of the object's source
text (``inspect.getsource`` of the function or class): the server compares it
with the deployed version's to refuse a code change without a new version.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle

from clipper_core.connection_models import local_python_path
from clipper_core.errors import ClipperError

__all__ = ["DeclarativeConfig", "config_body", "load_object", "read_config"]

#: Keys of a model entry that only the client writes.
_WIRE_ONLY = ("payload_b64", "source_sha256", "container")


def _on_path(folder: Path) -> None:
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def _import(path: str, run: Callable[[], Any]) -> Any:
    """``run()``, the user's code failing in it said in one line."""
    try:
        return run()
    except ModuleNotFoundError as exc:
        if exc.name == path or path.startswith(f"{exc.name}."):  # not a dependency of it
            raise ClipperError(
                f"no module named {exc.name!r} (for a file, write FILE.py:NAME)"
            ) from None
        raise ClipperError(f"importing {path} failed: {exc}") from None
    except SyntaxError as exc:
        raise ClipperError(
            f"{exc.filename}:{exc.lineno}: syntax error: {exc.msg} (importing {path})"
        ) from None
    except Exception as exc:  # the user's module-level code: any error is theirs
        raise ClipperError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None


def load_object(spec: str, base_dir: Path | None = None) -> tuple[Any, ModuleType]:
    """The object ``FILE.py:NAME`` or ``module:NAME`` names, and its module.

    Args:
        spec: What to load.
        base_dir: Where a relative ``FILE.py`` is, and where ``module`` is
            looked for first (default: the working directory).

    Raises:
        ClipperError: A malformed spec, a missing file or module, code that
            fails to import, or no such attribute.
    """
    base = base_dir or Path.cwd()
    path, sep, attr = spec.rpartition(":")
    if not sep or not path or not attr:
        raise ClipperError(f"expected FILE.py:NAME or module:NAME, got {spec!r}")
    if path.endswith(".py"):
        file = (base / path).resolve()
        if not file.exists():
            raise ClipperError(f"no such file: {file}")
        _on_path(file.parent)
        module_spec = importlib.util.spec_from_file_location(file.stem, file)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[file.stem] = module
        loader = module_spec.loader
        _import(path, lambda: loader.exec_module(module))
    else:
        _on_path(base)
        module = _import(path, lambda: importlib.import_module(path))
    try:
        return getattr(module, attr), module
    except AttributeError:
        raise ClipperError(f"{path} has no attribute {attr!r}") from None


@contextmanager
def pickled_by_value(module: ModuleType | None) -> Iterator[None]:
    """Within it, cloudpickle writes what ``module`` (a user's FILE.py) defines by
    value: the code travels in the pickle, not a reference to a file that may be
    edited or moved before the next replica starts."""
    if module is None:
        yield
        return
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def file_module(spec: str, module: ModuleType) -> ModuleType | None:
    """``module`` when ``spec`` names a FILE.py (pickled by value), else None (an
    installed module's code is found where it is installed)."""
    return module if spec.rpartition(":")[0].endswith(".py") else None


def source_digest(obj: Any, payload: bytes) -> str:
    """SHA-256 of the source text of ``obj`` 's function or class (of its pickle
    when the source cannot be read, e.g. a built-in)."""
    target = obj if inspect.isfunction(obj) or inspect.isclass(obj) else type(obj)
    try:
        text = inspect.getsource(target).encode()
    except (OSError, TypeError):
        text = payload
    return hashlib.sha256(text).hexdigest()


def _model_code(where: str, source: Any, base_dir: Path) -> dict[str, Any]:
    """``payload_b64``, ``source_sha256`` and ``container`` of a model's source."""
    from clipper_core.deployers.requirements import deploy_environment

    by_value: ModuleType | None = None
    if isinstance(source, str):
        try:
            obj, module = load_object(source, base_dir)
        except ClipperError as exc:
            raise ClipperError(f"{where}: source {source!r}: {exc}") from None
        by_value = file_module(source, module)
    elif callable(source):
        obj = source
    else:
        raise ClipperError(f"{where}: source must be FILE.py:NAME, module:NAME or a callable")
    identity = obj
    if isinstance(obj, type):
        obj = obj()
    with pickled_by_value(by_value):
        payload = cloudpickle.dumps(obj)
    return {
        "payload_b64": base64.b64encode(payload).decode(),
        "source_sha256": source_digest(identity, payload),
        "container": {
            "kind": "closure",
            "filename": "closure.pkl",
            "deploy_env": deploy_environment(
                [("cloudpickle", "exact"), ("numpy", "any")], pickled_code=True
            ),
            "python_path": local_python_path(),
        },
    }


def config_body(data: Mapping[str, Any], base_dir: Path | None = None) -> dict[str, Any]:
    """The ``apply`` call's body for a parsed file: each model's ``source``
    replaced by its code (the rest is checked by the server).

    Raises:
        ClipperError: A model's source cannot be loaded.
    """
    base = base_dir or Path.cwd()
    body = dict(data)
    models = body.get("models")
    if isinstance(models, list):
        out = []
        for i, entry in enumerate(models):
            if isinstance(entry, Mapping):
                where = f"models[{i}] ({entry.get('name')}:{entry.get('version')})"
                wire = sorted(set(entry) & set(_WIRE_ONLY))
                if wire:
                    raise ClipperError(f"{where}: unknown field(s) {', '.join(map(repr, wire))}")
                entry = dict(entry)
                source = entry.pop("source", None)
                if source is not None:
                    entry.update(_model_code(where, source, base))
            out.append(entry)
        body["models"] = out
    return body


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a declarative file (TOML) into the ``apply`` call's body.

    Raises:
        ClipperError: The file is missing or not valid TOML (the message has the
            line and column), or a model's source cannot be loaded.
    """
    file = Path(path)
    try:
        with file.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ClipperError(f"{file}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ClipperError(f"{file}: invalid TOML: {exc}") from None
    try:
        return config_body(data, file.resolve().parent)
    except ClipperError as exc:
        raise ClipperError(f"{file}: {exc}") from None


class DeclarativeConfig:
    """``ClipperConnection.apply``, over its management call ``_call``."""

    def _call(self, op: str, body: dict[str, Any] | None = None) -> Any:
        """Send one management call (``ClipperConnection._call``)."""
        raise NotImplementedError

    def apply(
        self,
        desired_or_path: Mapping[str, Any] | str | os.PathLike[str],
        prune: bool = False,
        *,
        dry_run: bool = False,
    ) -> list[dict[str, Any]]:
        """Make the server match a declarative file (or its parsed form: a dict
        with ``models``, ``apps``, ``pipelines``, whose models' ``source`` may
        also be a callable).  Applying twice changes nothing the second time.

        Args:
            desired_or_path: A TOML file's path, or the parsed file.
            prune: Also delete the models, apps and pipelines it does not describe.
            dry_run: Only say what would change.

        Returns:
            One dict per change, in the order made: ``kind`` (create, update,
            delete, unchanged), ``what`` (model, app, link, pipeline), ``name``,
            ``detail``, ``fields`` and ``text`` (one line for people).

        Raises:
            ClipperError: The file is invalid, or the server refused it (nothing
                changed) or failed part way (what was made before stays).
        """
        if isinstance(desired_or_path, Mapping):
            body = config_body(desired_or_path)
        else:
            body = read_config(desired_or_path)
        body["prune"] = prune
        body["dry_run"] = dry_run
        return list(self._call("apply", body))
