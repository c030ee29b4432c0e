"""Applications and what routes their queries.

An :class:`Application` answers a query with its one linked model (the direct
path, :func:`~clipper_core.dataplane.application.predict_with_slo`) unless its
``selector`` -- a :class:`QueryRouter` -- routes its queries: today an app's
selection policy (``clipper_core.selection.selector.AppSelector``), later a
pipeline.  A router finds the models it asks through a :class:`ModelLookup`
(the data plane), so the data plane never names the routers that plug into it.

The record types and the two Protocols share this module because they name each
other (an app holds its router; a router is handed the app).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from clipper_core.metrics import AppMetrics

if TYPE_CHECKING:
    from clipper_core.dataplane.model import Model

__all__ = ["Application", "ModelLookup", "Outcome", "QueryRouter"]


@dataclass(slots=True)
class Outcome:
    """The answer to one input: an output, or the app's default output and why."""

    output: Any
    default: bool = False
    explanation: str | None = None
    model: str | None = None
    # Set by selection policies that may query several models (clipper_core.selection):
    # the model versions that answered, the answer's confidence, those that did not.
    models: list[str] | None = None
    confidence: float | None = None
    missing: list[str] | None = None
    # The model versions without a live replica that made this a default output
    # at once (OIP answers 503 / UNAVAILABLE for them; Clipper's REST the default).
    unavailable: list[str] | None = None


@dataclass
class Application:
    """A registered application (Clipper's ``register_application``)."""

    name: str
    input_type: str
    default_output: Any
    slo: float  # seconds
    linked_models: list[str] = field(default_factory=list)
    policy: str = "single"
    metrics: AppMetrics = field(default_factory=AppMetrics, repr=False, compare=False)
    # What routes the app's queries when they do not simply go to its one linked
    # model: its selection policy at work (set by the server; None: the direct path).
    selector: QueryRouter | None = field(default=None, repr=False, compare=False)

    @property
    def routes_queries(self) -> bool:
        """Whether queries go through the app's router (not policy ``single``)."""
        return self.selector is not None and self.selector.routes_queries

    def default(self, explanation: str) -> Outcome:
        return Outcome(self.default_output, True, explanation)


class ModelLookup(Protocol):
    """Where a router finds applications and the model versions to ask
    (``DataPlane`` is one)."""

    @property
    def apps(self) -> Mapping[str, Application]: ...

    @property
    def models(self) -> Mapping[str, Model]: ...


class QueryRouter(Protocol):
    """What answers an application's queries in place of its one linked model."""

    @property
    def routes_queries(self) -> bool:
        """Whether queries go through :meth:`predict` (else the direct path)."""
        ...

    async def predict(
        self,
        lookup: ModelLookup,
        app: Application,
        inputs: Sequence[Any],
        keys: Sequence[bytes],
        deadline: float,
        *,
        version: str | None = None,
        uid: int = 0,
        raise_errors: bool = True,
    ) -> list[Outcome]:
        """Answer each input by the monotonic ``deadline``.

        Args:
            lookup: The applications and models.
            app: The application queried.
            inputs: The inputs, in the app's input type.
            keys: Each input's cache key.
            deadline: ``time.monotonic()`` by which every input is answered.
            version: The model version asked for, if any.
            uid: The user whose state decides (0: the app-wide state).
            raise_errors: Raise a model's error (a single query) rather than
                answering the default output for that input.
        """
        ...

    async def update(
        self, lookup: ModelLookup, app: Application, uid: int, x: Any, key: bytes, label: Any
    ) -> dict[str, Any]:
        """Learn from the true ``label`` of input ``x`` (``POST /<app>/update``);
        the reply body.  A router that learns nothing raises ``BadInput``."""
        ...
