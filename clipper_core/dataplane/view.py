"""What the frontends and the metrics see of the data plane: :class:`QueryView`.

Only the query path and read access; the mutators (``add_app``, ``link``,
``add_model_version``, ...) are for the server that configures the data plane.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from clipper_core.dataplane.model import Model
    from clipper_core.dataplane.routing import Application, Outcome
    from clipper_core.structures import PredictionCache

__all__ = ["QueryView"]


class QueryView(Protocol):
    """Read access and the query entry point of a data plane (``DataPlane`` is one)."""

    @property
    def apps(self) -> Mapping[str, Application]: ...

    @property
    def models(self) -> Mapping[str, Model]: ...

    @property
    def cache(self) -> PredictionCache | None: ...

    def app(self, name: str) -> Application:
        """The application ``name``; raises ``NotFound``."""
        ...

    def next_query_id(self) -> int:
        """A fresh id for a Clipper reply's ``query_id``."""
        ...

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
        """Answer each input within the app's latency objective."""
        ...

    def stats(self) -> dict[str, Any]:
        """Apps, model versions' queue figures and the cache's, as plain data."""
        ...
