"""What the framework deployers share: save, bundle, record, ship.

A framework deployer saves the model in its framework's own format into a fresh
folder, adds ``clipper_model.json`` (adapter, input type, adapter options, tensor
specs) and, when given, the cloudpickled ``func``; the folder travels as one tar
payload, the server unpacks it under its state dir, and the container's adapter
(``model_containers.adapters``) loads it once at start.  The Python and package
versions are recorded with it (``deploy_env``), and ``pkgs_to_install`` gives
the model a virtual environment of its own (:mod:`clipper_core.runtime_env`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cloudpickle

from clipper_core.connection import ClipperConnection
from clipper_core.deployers.requirements import deploy_environment, requirements_for
from clipper_core.errors import BadInput
from clipper_core.model_bundle import TAR, pack_directory
from clipper_core.runtime_env import _print_progress, build_runtime_env

#: The manifest a model folder carries (read by ``model_containers.adapters.base``).
MANIFEST = "clipper_model.json"
MANIFEST_FORMAT = 1

#: Where ``progress`` lines go by default (stderr).
default_progress: Callable[[str], None] = _print_progress

Saver = Callable[[Path], dict[str, Any]]


def classes_from_main(model: Any) -> list[str]:
    """The classes of the running script (``__main__``) that pickling ``model``
    refers to by name: a container cannot import them (pickle and joblib store
    classes by module and name; only closures are copied by value)."""
    import pickle
    import pickletools

    found: set[str] = set()
    memo: list[Any] = []
    strings: list[Any] = []  # the values pushed lately, enough for STACK_GLOBAL
    for op, arg, _ in pickletools.genops(pickle.dumps(model, protocol=4)):
        name = op.name
        if name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            strings.append(arg)
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            index = int(str(arg))
            strings.append(memo[index] if index < len(memo) else None)
        elif name == "MEMOIZE":
            memo.append(strings[-1] if strings else None)
        elif name == "STACK_GLOBAL":
            if len(strings) >= 2 and strings[-2] == "__main__":
                found.add(str(strings[-1]))
            strings.append(None)
        elif name == "GLOBAL" and str(arg).startswith("__main__ "):
            found.add(str(arg).split(" ", 1)[1])
        else:
            strings.append(None)
        del strings[:-4]
    return sorted(found)


def tensor_specs(specs: Iterable[Any] | None) -> list[dict[str, Any]] | None:
    """Declared tensor specs as JSON: dicts ``{"name", "datatype", "shape"}`` or
    objects with those attributes (``model_containers.TensorSpec``)."""
    if specs is None:
        return None
    out: list[dict[str, Any]] = []
    for spec in specs:
        get = spec.get if isinstance(spec, dict) else lambda k, s=spec: getattr(s, k, None)
        name, datatype, shape = get("name"), get("datatype"), get("shape")
        if not name or not datatype:
            raise BadInput(f"a tensor spec needs a name and a datatype, got {spec!r}")
        out.append(
            {
                "name": str(name),
                "datatype": str(datatype).upper(),
                "shape": [-1 if d is None else int(d) for d in (shape or ())],
            }
        )
    return out


def pick_model(model: Any, kwargs: dict[str, Any], *aliases: str) -> Any:
    """The model argument, also under Clipper's framework-specific names."""
    for alias in aliases:
        if alias in kwargs:
            value = kwargs.pop(alias)
            if model is None:
                model = value
    if model is None:
        raise BadInput("no model given: pass model=...")
    return model


def deploy_framework_model(
    clipper_conn: ClipperConnection,
    name: str,
    version: str | int,
    input_type: str,
    *,
    adapter: str,
    save: Saver,
    func: Callable[..., Any] | None = None,
    packages: Sequence[tuple[str, str]] = (),
    pickled_code: bool = False,
    inputs: Iterable[Any] | None = None,
    outputs: Iterable[Any] | None = None,
    labels: list[str] | None = None,
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: Sequence[str] | None = None,
    requirements_file: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = default_progress,
    **kwargs: Any,
) -> None:
    """Save a model with ``save(folder) -> adapter options`` and deploy it.

    Args:
        clipper_conn: The connection to the server.
        name: Model name.
        version: Model version.
        input_type: Clipper's input type of the model's queries.
        adapter: The container adapter that loads it (``"sklearn"``, ...).
        save: Writes the model's files into the folder it is given and returns
            the adapter's options (stored in the manifest).
        func: Optional ``func(model, inputs) -> outputs``, cloudpickled with it.
        packages: ``(import name, match)`` of what the saved model needs (see
            :func:`clipper_core.runtime_env.deploy_environment`).
        pickled_code: ``save`` pickled Python code (besides ``func``).
        inputs: Declared OIP input specs (override what the adapter derives).
        outputs: Declared OIP output specs.
        labels: Model labels.
        num_replicas: Replicas to start.
        batch_size: -1 adaptive, > 0 fixed (the cap of an adaptive ``controller``).
        pkgs_to_install: pip requirements: the model runs in a virtual
            environment of its own, built once by the server and cached.
        requirements_file: A requirements file, added to ``pkgs_to_install``.
        progress: Where the environment build's lines go (stderr by default).
        **kwargs: Model options of ``ClipperConnection`` (``cpus``,
            ``memory_limit_mb``, ``cache_enabled``, ``batch_wait_micros``, ``controller``).
    """
    if func is not None and not callable(func):
        raise BadInput("func must be callable: func(model, inputs) -> outputs")
    packages = list(packages)
    if func is not None:
        packages.append(("cloudpickle", "exact"))
    packages.append(("numpy", "any"))
    with tempfile.TemporaryDirectory(prefix="clipper-deploy-") as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        options = save(folder)
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "adapter": adapter,
            "input_type": input_type,
            "options": options,
            "func": None,
            "inputs": tensor_specs(inputs),
            "outputs": tensor_specs(outputs),
        }
        if func is not None:
            with open(folder / "func.pkl", "wb") as f:
                cloudpickle.dump(func, f)
            manifest["func"] = "func.pkl"
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        payload = pack_directory(folder)
    deploy_env = deploy_environment(packages, pickled_code=pickled_code or func is not None)
    container: dict[str, Any] = {
        "kind": adapter,
        "adapter": adapter,
        "filename": "model.tar",
        "archive": TAR,
        "deploy_env": deploy_env,
    }
    requirements = requirements_for(pkgs_to_install, requirements_file, deploy_env)
    if requirements:
        container["runtime_env"] = build_runtime_env(clipper_conn, requirements, progress=progress)
    clipper_conn._add_model(
        name,
        version,
        input_type,
        container=container,
        payload=payload,
        labels=labels,
        num_replicas=num_replicas,
        batch_size=batch_size,
        **kwargs,
    )
