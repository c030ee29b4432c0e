"""Deploying models through ``ClipperConnection``: what an ``add_model`` call sends.

A model goes to the server as one management call: its settings, a container
record (a pickled closure, or an ``external`` container that registers itself)
and, for a closure, the pickle.  The record names the deployer's source folders
(``python_path``) and its Python, cloudpickle and numpy versions, so that the
container can import what was pickled by reference, or say why it cannot.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
from typing import Any

import cloudpickle

from clipper_core.errors import BadInput

__all__ = ["ModelDeployment", "local_python_path", "noted"]

log = logging.getLogger("clipper_core.connection")


def noted(reply: Any) -> str:
    """A management reply as text; one that says nothing changed, or what was
    updated in place, is logged (INFO), so that a script run again says so."""
    text = reply if isinstance(reply, str) else json.dumps(reply)
    if text.startswith(("unchanged", "updated")):
        log.info("%s", text)
    return text


def local_python_path() -> list[str]:
    """The deployer's own source folders, so that functions and classes pickled by
    reference import in the container; never site-packages (the container may run
    in an environment of its own)."""
    prefixes = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
    paths = [os.getcwd()]
    for p in sys.path:
        if p and os.path.isdir(p) and not os.path.abspath(p).startswith(prefixes):
            paths.append(os.path.abspath(p))
    return list(dict.fromkeys(paths))


class ModelDeployment:
    """The deploy calls of :class:`~clipper_core.connection.ClipperConnection`
    (Clipper's ``clipper_admin`` names), over its management call ``_call``."""

    def _call(self, op: str, body: dict[str, Any] | None = None) -> Any:
        """Send one management call (``ClipperConnection._call``)."""
        raise NotImplementedError

    def _add_model(
        self,
        name: str,
        version: str | int,
        input_type: str,
        *,
        container: dict[str, Any],
        payload: bytes | None = None,
        labels: list[str] | None = None,
        num_replicas: int = 1,
        batch_size: int = -1,
        cpus: list[int] | None = None,
        memory_limit_mb: int | None = None,
        cache_enabled: bool = True,
        batch_wait_micros: int = 0,
        queue_capacity: int | None = None,
        batch_timeout: float | None = None,
        controller: str | None = None,
        make_current: bool = True,
    ) -> str:
        body: dict[str, Any] = {
            "model_name": name,
            "model_version": str(version),
            "input_type": input_type,
            "labels": labels or [],
            "container": container,
            "num_replicas": num_replicas,
            "batch_size": batch_size,
            "cpus": cpus,
            "memory_limit_mb": memory_limit_mb,
            "cache_enabled": cache_enabled,
            "batch_wait_micros": batch_wait_micros,
            "python_path": local_python_path(),
            "make_current": make_current,
        }
        # Admission settings; absent: the server's defaults.
        if queue_capacity is not None:
            body["queue_capacity"] = queue_capacity
        if batch_timeout is not None:
            body["batch_timeout"] = batch_timeout
        # The batch-size controller ("aimd" | "quantile" | "fixed"); absent: derived
        # from batch_size (> 0: fixed, else aimd).
        if controller is not None:
            body["controller"] = controller
        if payload is not None:
            body["payload_b64"] = base64.b64encode(payload).decode()
        return noted(self._call("add_model", body))

    def deploy_pickled(
        self,
        name: str,
        version: str | int,
        input_type: str,
        obj: Any,
        *,
        container_extra: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> str:
        """Deploy a cloudpickled callable or ``Model`` instance (used by deployers).

        The Python, cloudpickle and numpy versions are recorded with it, so that a
        container running other ones says so at start (``container_extra`` may
        replace that record, or add a ``runtime_env``).

        Once its replicas serve, the new version answers the model's queries
        (it becomes current, as in Clipper); ``make_current=False`` deploys it
        beside the current one (a canary: switch with ``set_model_version``).
        Deploying a version that exists with the same code (the digest of its
        pickle) and settings changes nothing and returns ``"unchanged: ..."``;
        other code under the same version is refused, naming the difference
        (deploy it as a new version); settings that apply in place
        (``num_replicas``, ``batch_wait_micros``, ``batch_timeout``,
        ``cache_enabled``, ``labels``) are updated (``"updated: ..."``).

        Returns:
            The server's reply (``"unchanged: ..."`` and ``"updated: ..."`` are
            also logged at INFO).
        """
        from clipper_core.deployers.requirements import deploy_environment

        declared = getattr(obj, "input_type", None)
        if isinstance(declared, str) and declared != input_type:
            # Said here in one line, not by the container after it started.
            raise BadInput(
                f"{type(obj).__name__} declares input_type={declared!r} but is deployed"
                f" with input_type={input_type!r}; make them agree"
            )
        if not callable(obj) and not callable(getattr(obj, "predict", None)):
            raise BadInput(f"{type(obj).__name__} is neither callable nor a Model with predict()")
        container: dict[str, Any] = {
            "kind": "closure",
            "filename": "closure.pkl",
            "deploy_env": deploy_environment(
                [("cloudpickle", "exact"), ("numpy", "any")], pickled_code=True
            ),
            **(container_extra or {}),
        }
        return self._add_model(
            name,
            version,
            input_type,
            container=container,
            payload=cloudpickle.dumps(obj),
            **kwargs,
        )

    def deploy_model(
        self,
        name: str,
        version: str | int,
        input_type: str,
        model: Any,
        *,
        labels: list[str] | None = None,
        num_replicas: int = 1,
        batch_size: int = -1,
        **kwargs: Any,
    ) -> str:
        """Deploy an instance of a ``model_containers.Model`` subclass (see
        :meth:`deploy_pickled`: it becomes current once it serves, unless
        ``make_current=False``)."""
        return self.deploy_pickled(
            name,
            version,
            input_type,
            model,
            labels=labels,
            num_replicas=num_replicas,
            batch_size=batch_size,
            **kwargs,
        )

    def register_model(
        self,
        name: str,
        version: str | int,
        input_type: str,
        labels: list[str] | None = None,
        batch_size: int = -1,
    ) -> str:
        """Register a model whose containers are started by hand and join by
        themselves (``python -m model_containers --register-url ...``).  Its
        ``container_name`` reads ``"NO_CONTAINER"``, as in Clipper."""
        return self._add_model(
            name,
            version,
            input_type,
            container={"kind": "external", "image": "NO_CONTAINER"},
            labels=labels,
            num_replicas=0,
            batch_size=batch_size,
        )
