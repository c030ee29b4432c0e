"""The selection runtime of a server: ``SelectionService``.

``SelectionService`` (one per server) holds an ``AppSelector``
(:mod:`clipper_core.selection.selector`) per application -- the policy bound to
the app's linked models, the policy state of each user id, the models recently
chosen for each (user, input), and counters -- and the ``StatePersister``
(:mod:`clipper_core.selection.persister`) that writes their states to the store's
kv table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from clipper_core.dataplane.routing import Application
from clipper_core.errors import BadInput, NotFound
from clipper_core.selection import State, validate_policy
from clipper_core.selection.persister import KvStore, StatePersister
from clipper_core.selection.selector import (
    FEEDBACK_TIMEOUT,
    GLOBAL_UID,
    AppSelector,
    kv_namespace,
)

log = logging.getLogger("clipper_core.selection")

__all__ = [
    "FEEDBACK_TIMEOUT",
    "GLOBAL_UID",
    "AppSelector",
    "KvStore",
    "SelectionService",
    "StatePersister",
    "kv_namespace",
]


class SelectionService:
    """The selectors of a server's applications and the writer of their states."""

    def __init__(self) -> None:
        self.selectors: dict[str, AppSelector] = {}
        self._store: KvStore | None = None
        self.persister: StatePersister | None = None

    def open(self, store: KvStore) -> None:
        """Use ``store`` for policy states (call before apps are attached)."""
        self._store = store
        self.persister = StatePersister(store)

    async def close(self) -> None:
        """Commit every pending state write (call before closing the store)."""
        if self.persister is not None:
            await self.persister.flush()
        self.persister = None
        self._store = None

    def attach(self, app: Application, config: Mapping[str, Any] | None) -> AppSelector:
        """Give ``app`` its selector, with the states persisted for its policy."""
        states: dict[int, State] = {}
        if self._store is not None:
            for key, record in self._store.list_kv(kv_namespace(app.name)).items():
                if (
                    key.isdigit()
                    and isinstance(record, dict)
                    and record.get("policy") == app.policy
                    and isinstance(record.get("state"), dict)
                ):
                    states[int(key)] = record["state"]
        try:
            selector = AppSelector(app.name, app.policy, config, states, self.persister)
        except BadInput as exc:
            # A stored policy this version does not know (or options it rejects):
            # serve the app on the direct path rather than not at all.
            log.error("application %s: %s; serving it with policy 'single'", app.name, exc)
            app.policy = "single"
            selector = AppSelector(app.name, "single", None, {}, self.persister)
        app.selector = selector
        self.selectors[app.name] = selector
        return selector

    def reset(self, app_name: str) -> None:
        """Forget an app's learned states, in memory and in the store."""
        selector = self.selectors.get(app_name)
        if selector is not None:
            selector.reset()
        if self.persister is not None:
            self.persister.drop(kv_namespace(app_name))

    def set_policy(
        self, app: Application, policy: str, config: Mapping[str, Any] | None
    ) -> AppSelector:
        """Switch ``app`` to another policy (or configuration); its states restart."""
        validate_policy(policy, config)
        self.reset(app.name)
        app.policy = policy
        selector = AppSelector(app.name, policy, config, {}, self.persister)
        app.selector = selector
        self.selectors[app.name] = selector
        return selector

    def forget(self, app_name: str) -> None:
        """The app was deleted: drop its selector and its stored states."""
        self.reset(app_name)
        self.selectors.pop(app_name, None)

    def get(self, app_name: str) -> AppSelector:
        selector = self.selectors.get(app_name)
        if selector is None:
            raise NotFound(f"application {app_name!r} is not registered")
        return selector
