"""Deploy plain Python functions (Clipper's ``deploy_python_closure``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from clipper_core.connection import ClipperConnection
from clipper_core.deployers.requirements import deploy_environment, requirements_for
from clipper_core.errors import BadInput, ClipperError
from clipper_core.runtime_env import _print_progress, build_runtime_env

__all__ = ["create_endpoint", "deploy_and_link", "deploy_python_closure"]


def _made(reply: str) -> bool:
    """Whether a management reply says the call created something."""
    return not reply.startswith(("unchanged", "updated"))


def deploy_and_link(
    clipper_conn: ClipperConnection,
    app_name: str,
    model_name: str,
    version: str | int,
    deploy: Callable[[], str],
    *,
    register: Callable[[], str] | None = None,
    replace: bool = False,
) -> None:
    """Register an app (with ``register``), deploy a model (``deploy``) and link
    them, as one step: when a step fails, what this call created is removed
    again (the app, the model version; the version that was current before is
    current again), and the error says so, and what remains.

    Args:
        replace: Unlink the app's other models once this one is linked, so that
            it answers under policy ``single``.

    Raises:
        ClipperError: A step failed (after the undo).
    """
    conn = clipper_conn
    undo: list[tuple[str, Callable[[], object]]] = []
    try:
        if register is not None and _made(register()):
            undo.append((f"application {app_name}", lambda: conn.unregister_application(app_name)))
        try:
            before: str | None = conn.get_current_model_version(model_name)
        except ClipperError:
            before = None
        if _made(deploy()):

            def forget_version() -> None:
                conn.stop_versioned_models({model_name: [str(version)]})
                if before is not None and before != str(version):
                    conn.set_model_version(model_name, before)

            undo.append((f"model {model_name}:{version}", forget_version))
        conn.link_model_to_app(app_name, model_name)
        if replace:
            for other in conn.get_linked_models(app_name):
                if other != model_name:
                    conn.unlink_model_from_app(app_name, other)
    except ClipperError as exc:
        removed, remains = [], []
        for what, step in reversed(undo):
            try:
                step()
                removed.append(what)
            except ClipperError as undo_error:
                remains.append(f"{what} ({undo_error})")
        said = f"; removed again: {', '.join(removed)}" if removed else ""
        said += f"; still there: {', '.join(remains)}" if remains else ""
        raise ClipperError(f"{exc}{said or '; nothing was created'}") from exc


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
    pkgs_to_install: Sequence[str] | None = None,
    *,
    requirements_file: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = _print_progress,
    **kwargs: Any,
) -> str:
    """Serialize ``func`` with cloudpickle and serve it in its own process.

    ``func`` takes a list of inputs and returns a list with one output per input.
    ``base_image`` and ``registry`` are accepted for Clipper compatibility and
    ignored: containers here are local processes.  Extra keyword arguments
    (``cpus``, ``memory_limit_mb``, ``cache_enabled``, ``batch_wait_micros``,
    ``controller``: "aimd", "quantile" or "fixed") go
    to the model's configuration.  ``memory_limit_mb`` limits each replica's memory
    in a cgroup v2 child where the server can make one; elsewhere it limits its
    address space (``RLIMIT_AS``, glibc's malloc arenas capped at two): runtimes
    that reserve far more than they use (a JVM, CUDA) need a limit well above
    their use there.

    With ``pkgs_to_install`` (pip requirement strings) or ``requirements_file``,
    the model runs in a virtual environment of its own, built by the server once
    per set of requirements and cached under its state dir (``envs/<id>/``);
    pip's output is passed to ``progress`` (stderr by default) while it builds.
    cloudpickle is pinned there to this version.  The Python and cloudpickle
    versions are recorded either way: a container running other ones stops at
    start and says which.
    """
    if not callable(func):
        raise BadInput("func must be callable: it takes a list of inputs, returns a list")
    extra: dict[str, Any] = {}
    deploy_env = deploy_environment([("cloudpickle", "exact"), ("numpy", "any")], pickled_code=True)
    requirements = requirements_for(pkgs_to_install, requirements_file, deploy_env)
    if requirements:
        extra["runtime_env"] = build_runtime_env(clipper_conn, requirements, progress=progress)
    return clipper_conn.deploy_pickled(
        name,
        version,
        input_type,
        func,
        container_extra={"deploy_env": deploy_env, **extra},
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
    pkgs_to_install: Sequence[str] | None = None,
    **kwargs: Any,
) -> None:
    """Register an app, deploy ``func`` as a model of the same name, and link them.

    Run again with the same arguments it changes nothing; when a step fails,
    what it created is removed again (see :func:`deploy_and_link`).
    """
    deploy_and_link(
        clipper_conn,
        name,
        name,
        version,
        lambda: deploy_python_closure(
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
        ),
        register=lambda: clipper_conn.register_application(
            name, input_type, default_output, slo_micros
        ),
    )
