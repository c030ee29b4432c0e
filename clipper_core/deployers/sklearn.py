"""Deploy scikit-learn estimators and pipelines (saved with joblib or skops)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from clipper_core.connection import ClipperConnection
from clipper_core.deployers.framework import (
    classes_from_main,
    default_progress,
    deploy_framework_model,
    pick_model,
)
from clipper_core.errors import BadInput


def deploy_sklearn_model(
    clipper_conn: ClipperConnection,
    name: str,
    version: str | int,
    input_type: str,
    func: Callable[[Any, list[Any]], Sequence[Any]] | None = None,
    model: Any = None,
    base_image: str | None = None,
    labels: list[str] | None = None,
    registry: str | None = None,
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: Sequence[str] | None = None,
    *,
    method: str = "predict",
    serialization: str = "joblib",
    requirements_file: str | os.PathLike[str] | None = None,
    inputs: Iterable[Any] | None = None,
    outputs: Iterable[Any] | None = None,
    progress: Callable[[str], None] | None = default_progress,
    **kwargs: Any,
) -> None:
    """Serve a fitted scikit-learn estimator (or pipeline).

    It is saved with joblib (scikit-learn's documented format; ``serialization=
    "skops"`` uses skops.io when installed) and loaded once by the container,
    which calls ``model.<method>(X)`` once per batch, ``X`` being the batch
    stacked into an ``(N, d)`` array (a list of N strings for ``strings``
    models, e.g. a text pipeline).  With ``func``, ``func(model, inputs)`` is
    called instead.  scikit-learn's exact version is recorded: a container with
    another one refuses to start (joblib files are tied to the release).

    Args:
        clipper_conn: The connection to the server.
        name: Model name.
        version: Model version.
        input_type: ``ints``, ``floats``, ``doubles``, ``strings`` or ``bytes``.
        func: Optional ``func(model, inputs) -> outputs``.
        model: The fitted estimator.
        base_image: Accepted for Clipper compatibility; ignored.
        labels: Model labels.
        registry: Accepted for Clipper compatibility; ignored.
        num_replicas: Replicas to start.
        batch_size: -1 adaptive, > 0 fixed (the cap of an adaptive ``controller``).
        pkgs_to_install: pip requirements: the model gets a virtual environment
            of its own (scikit-learn is pinned to this version unless named).
        method: ``predict``, ``predict_proba``, ``decision_function``, ...
        serialization: ``joblib`` or ``skops``.
        requirements_file: More requirements, from a file.
        inputs: Declared OIP input specs (default: derived from ``n_features_in_``).
        outputs: Declared OIP output specs (default: from a probe prediction).
        progress: Where the environment build's lines go.
        **kwargs: Model options (``cpus``, ``memory_limit_mb``, ``cache_enabled``,
            ``batch_wait_micros``, ``controller``).
    """
    model = pick_model(model, kwargs, "sklearn_model")
    if not callable(getattr(model, method, None)):
        raise BadInput(f"{type(model).__name__} has no method {method!r}")
    if serialization not in ("joblib", "skops"):
        raise BadInput("serialization must be 'joblib' or 'skops'")
    if serialization == "skops":
        try:
            import skops.io  # noqa: F401
        except ImportError:
            raise BadInput("serialization='skops' needs skops: pip install skops") from None
    local = classes_from_main(model)
    if local:
        raise BadInput(
            f"{', '.join(local)} is defined in the script itself (__main__), which the"
            " container cannot import: move it to a module next to the script (its folder"
            " is sent along), or deploy a function with deploy_python_closure"
        )

    def save(folder: Path) -> dict[str, Any]:
        if serialization == "skops":
            import skops.io as sio

            sio.dump(model, folder / "model.skops")
            return {"file": "model.skops", "format": "skops", "method": method}
        import joblib

        joblib.dump(model, folder / "model.joblib")
        return {"file": "model.joblib", "format": "joblib", "method": method}

    packages = [("sklearn", "exact"), ("scipy", "any")]
    packages.append(("skops", "present") if serialization == "skops" else ("joblib", "present"))
    deploy_framework_model(
        clipper_conn,
        name,
        version,
        input_type,
        adapter="sklearn",
        save=save,
        func=func,
        packages=packages,
        inputs=inputs,
        outputs=outputs,
        labels=labels,
        num_replicas=num_replicas,
        batch_size=batch_size,
        pkgs_to_install=pkgs_to_install,
        requirements_file=requirements_file,
        progress=progress,
        **kwargs,
    )
