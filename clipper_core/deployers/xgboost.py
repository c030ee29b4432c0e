"""Deploy XGBoost models (saved with ``save_model`` as UBJSON or JSON)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from clipper_core.connection import ClipperConnection
from clipper_core.deployers.framework import default_progress, deploy_framework_model, pick_model
from clipper_core.errors import BadInput


def deploy_xgboost_model(
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
    model_format: str = "ubj",
    requirements_file: str | os.PathLike[str] | None = None,
    inputs: Iterable[Any] | None = None,
    outputs: Iterable[Any] | None = None,
    progress: Callable[[str], None] | None = default_progress,
    **kwargs: Any,
) -> None:
    """Serve an XGBoost ``Booster`` or sklearn-API model (``XGBClassifier``, ...).

    Saved with ``save_model`` in XGBoost's own format (``model_format="ubj"`` or
    ``"json"``).  A ``Booster`` predicts a batch with one ``inplace_predict`` on
    the stacked ``(N, d)`` array; an sklearn-API model with ``model.<method>(X)``.
    With ``func``, ``func(model, inputs)`` is called instead.

    Args:
        clipper_conn: The connection to the server.
        name: Model name.
        version: Model version.
        input_type: Clipper's input type.
        func: Optional ``func(model, inputs) -> outputs``.
        model: A trained ``xgboost.Booster`` or ``xgboost.XGBModel``.
        base_image: Accepted for Clipper compatibility; ignored.
        labels: Model labels.
        registry: Accepted for Clipper compatibility; ignored.
        num_replicas: Replicas to start.
        batch_size: -1 adaptive, > 0 fixed (the cap of an adaptive ``controller``).
        pkgs_to_install: pip requirements for an environment of its own.
        method: sklearn-API models: ``predict`` or ``predict_proba``.
        model_format: ``ubj`` (default) or ``json``.
        requirements_file: More requirements, from a file.
        inputs: Declared OIP input specs (default: from the booster's features).
        outputs: Declared OIP output specs (default: from a probe prediction).
        progress: Where the environment build's lines go.
        **kwargs: Model options (``cpus``, ``memory_limit_mb``, ``controller``, ...).
    """
    model = pick_model(model, kwargs, "xgboost_model")
    if model_format not in ("ubj", "json"):
        raise BadInput("model_format must be 'ubj' or 'json'")
    if not hasattr(model, "save_model"):
        raise BadInput(f"{type(model).__name__} is not an XGBoost model")
    # The saved file holds XGBoost's model, not a subclass's code: the container
    # rebuilds the nearest XGBoost class (a subclass of the script itself,
    # __main__, could not be imported there: every replica failed to load).
    cls = next(
        (c for c in type(model).__mro__ if c.__module__.split(".")[0] == "xgboost"), type(model)
    )
    is_sklearn_api = hasattr(model, "get_booster")

    def save(folder: Path) -> dict[str, Any]:
        filename = f"model.{model_format}"
        model.save_model(str(folder / filename))
        return {
            "file": filename,
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "method": method,
        }

    packages = [("xgboost", "present")]
    if is_sklearn_api:
        packages.append(("sklearn", "present"))
    deploy_framework_model(
        clipper_conn,
        name,
        version,
        input_type,
        adapter="xgboost",
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
