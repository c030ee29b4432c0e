"""Deploy plain Python functions (Clipper's ``deploy_python_closure``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clipper_core.connection import ClipperConnection
from clipper_core.errors import BadInput


def deploy_python_closure(
    clipper_conn: ClipperConnection,
    name: str,
    version: str | int,
    input_type: str,
    func: Callable[[list[Any]], list[Any]],
    base_image: str | None = None,
    labels: list[str] | None = None,
    registry: str | None = None,
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: list[str] | None = None,
    **kwargs: Any,
) -> None:
    """Serialize ``func`` with cloudpickle and serve it in its own process.

    ``func`` takes a list of inputs and returns a list with one output per input.
    ``base_image`` and ``registry`` are accepted for Clipper compatibility and
    ignored: containers here are local processes.  Extra keyword arguments
    (``cpus``, ``memory_limit_mb``, ``cache_enabled``, ``batch_wait_micros``) go
    to the model's configuration.
    """
    if not callable(func):
        raise BadInput("func must be callable: it takes a list of inputs, returns a list")
    if pkgs_to_install:
        raise BadInput(
            "pkgs_to_install needs per-model virtual environments, which this"
            " version does not build yet; install the packages where the server runs"
        )
    clipper_conn.deploy_pickled(
        name,
        version,
        input_type,
        func,
        labels=labels,
        num_replicas=num_replicas,
        batch_size=batch_size,
        **kwargs,
    )


def create_endpoint(
    clipper_conn: ClipperConnection,
    name: str,
    input_type: str,
    func: Callable[[list[Any]], list[Any]],
    default_output: str = "None",
    version: str | int = 1,
    slo_micros: int = 3_000_000,
    labels: list[str] | None = None,
    num_replicas: int = 1,
    batch_size: int = -1,
    pkgs_to_install: list[str] | None = None,
    **kwargs: Any,
) -> None:
    """Register an app, deploy ``func`` as a model of the same name, and link them."""
    clipper_conn.register_application(name, input_type, default_output, slo_micros)
    deploy_python_closure(
        clipper_conn,
        name,
        version,
        input_type,
        func,
        labels=labels,
        num_replicas=num_replicas,
        batch_size=batch_size,
        pkgs_to_install=pkgs_to_install,
        **kwargs,
    )
    clipper_conn.link_model_to_app(name, name)
