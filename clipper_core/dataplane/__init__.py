"""The data plane: applications, model versions, replicas, and the query path."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from clipper_core.dataplane.application import predict_with_slo
from clipper_core.dataplane.model import Model
from clipper_core.dataplane.model_version import ModelVersion
from clipper_core.dataplane.routing import Application, ModelLookup, Outcome, QueryRouter
from clipper_core.dataplane.view import QueryView
from clipper_core.errors import BadInput, NotFound
from clipper_core.structures import PredictionCache

__all__ = [
    "Application",
    "BatchSloRule",
    "DataPlane",
    "Model",
    "ModelLookup",
    "ModelVersion",
    "Outcome",
    "QueryRouter",
    "QueryView",
]

#: Decides the batch latency objective of model versions from the apps and models:
#: ``rule(apps, models) -> {(model, version): seconds}``; versions left out get
#: the objective for unlinked models.  See ``clipper_core.planning.budgets``.
BatchSloRule = Callable[
    [Mapping[str, Application], Mapping[str, Model]], Mapping[tuple[str, str], float]
]


class DataPlane:
    """Registry of applications and model versions, and the query entry point.

    Args:
        cache_bytes: The prediction cache's budget (0: no cache).
        batch_slo_rule: Decides the model versions' batch latency objectives; it
            runs again whenever apps, links or versions change.  The data plane
            makes no such policy itself: without a rule every version keeps the
            objective for unlinked models until :meth:`set_batch_slos` is called.
    """

    def __init__(self, *, cache_bytes: int, batch_slo_rule: BatchSloRule | None = None) -> None:
        self.cache: PredictionCache | None = (
            PredictionCache(cache_bytes) if cache_bytes > 0 else None
        )
        self.apps: dict[str, Application] = {}
        self.models: dict[str, Model] = {}
        self._query_ids = itertools.count()
        self._batch_slo_rule = batch_slo_rule

    # -- configuration ----------------------------------------------------------

    def add_app(self, app: Application) -> None:
        self.apps[app.name] = app
        self._update_slos()

    def remove_app(self, name: str) -> None:
        self.apps.pop(name, None)
        self._update_slos()

    def link(self, app_name: str, model_name: str) -> None:
        app = self.apps[app_name]
        if model_name not in app.linked_models:
            app.linked_models.append(model_name)
        self._update_slos()

    def unlink(self, app_name: str, model_name: str) -> None:
        app = self.apps.get(app_name)
        if app is not None and model_name in app.linked_models:
            app.linked_models.remove(model_name)
        self._update_slos()

    def add_model_version(self, mv: ModelVersion) -> None:
        model = self.models.setdefault(mv.name, Model(mv.name))
        model.versions[mv.version] = mv
        self._update_slos()

    def get_model_version(self, name: str, version: str) -> ModelVersion:
        model = self.models.get(name)
        mv = None if model is None else model.versions.get(version)
        if mv is None:
            raise NotFound(f"model {name}:{version} is not deployed")
        return mv

    def set_current_version(self, name: str, version: str) -> None:
        model = self.models.get(name)
        if model is None or version not in model.versions:
            raise NotFound(f"model {name}:{version} is not deployed")
        model.current = version

    async def remove_model_version(self, name: str, version: str) -> None:
        model = self.models.get(name)
        if model is None:
            return
        mv = model.versions.pop(version, None)
        model.draining.discard(version)
        if model.current == version:
            model.current = None
        if not model.versions:
            del self.models[name]
        if mv is not None:
            await mv.close()
            if self.cache is not None:
                self.cache.invalidate(name, version)

    async def drain_version(self, name: str, version: str, timeout: float) -> bool:  # noqa: ASYNC109
        """Let a version about to be deleted answer what it holds, taking
        nothing new (``undrain_version`` if its deletion fails); whether it did
        within ``timeout`` seconds."""
        model = self.models.get(name)
        mv = None if model is None else model.versions.get(version)
        if model is None or mv is None:
            return True
        model.draining.add(version)  # new queries no longer reach it
        return await mv.drain(timeout)

    def undrain_version(self, name: str, version: str) -> None:
        if (model := self.models.get(name)) is not None:
            model.draining.discard(version)

    async def close(self) -> None:
        for model in list(self.models.values()):
            for mv in list(model.versions.values()):
                await mv.close()

    def set_batch_slos(self, slos: Mapping[tuple[str, str], float]) -> None:
        """Give each model version its batch latency objective (seconds), by
        ``(model, version)``; versions left out get the one for unlinked models."""
        for model in self.models.values():
            for version, mv in model.versions.items():
                mv.set_slo(slos.get((model.name, version)))

    def _update_slos(self) -> None:
        if self._batch_slo_rule is not None:
            self.set_batch_slos(self._batch_slo_rule(self.apps, self.models))

    # -- queries ----------------------------------------------------------------

    def next_query_id(self) -> int:
        return next(self._query_ids)

    def app(self, name: str) -> Application:
        app = self.apps.get(name)
        if app is None:
            raise NotFound(f"application {name!r} is not registered")
        return app

    async def predict(
        self,
        app_name: str,
        inputs: Sequence[Any],
        keys: Sequence[bytes],
        *,
        version: str | None = None,
        deadline: float | None = None,
        raise_errors: bool = True,
        uid: int = 0,
    ) -> list[Outcome]:
        """Answer each input within the app's latency objective.

        ``uid`` is the user whose selection-policy state decides which models answer
        (0, the app-wide state, by default).
        """
        app = self.app(app_name)
        end = time.monotonic() + app.slo
        if deadline is not None:
            end = min(end, deadline)
        if not app.linked_models:
            app.metrics.unanswered(len(inputs), "no_model")
            return [app.default(f"no model is linked to application {app.name!r}")] * len(inputs)
        selector = app.selector
        if selector is not None and app.routes_queries:
            return await selector.predict(
                self, app, inputs, keys, end, version=version, uid=uid, raise_errors=raise_errors
            )
        model = self.models.get(app.linked_models[0])
        mv = None if model is None else model.version_for(version)
        if mv is None:
            name = app.linked_models[0]
            app.metrics.unanswered(len(inputs), "no_model")
            if model is not None and version is None and model.versions:
                # Its current version was deleted; others are deployed.
                why = f"model {name!r} has no current version (set one: set_model_version)"
            else:
                why = f"model {name!r} has no deployed version"
            return [app.default(why)] * len(inputs)
        if mv.input_type != app.input_type:
            raise BadInput(
                f"model {mv.key} takes {mv.input_type!r} but app {app.name!r} sends"
                f" {app.input_type!r}"
            )
        return await predict_with_slo(app, mv, inputs, keys, end, raise_errors=raise_errors)

    def stats(self) -> dict[str, Any]:
        cache = self.cache.stats() if self.cache is not None else None
        return {
            "apps": sorted(self.apps),
            "models": [mv.stats() for m in self.models.values() for mv in m.versions.values()],
            "cache": cache,
        }
