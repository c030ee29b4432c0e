"""Pipelines through ``ClipperConnection``: register, read, update, delete.

A pipeline is a DAG of stages served as one application at ``/<name>/predict``
(see docs/guides/pipelines.md for the shape of ``stages`` and ``edges``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PipelineConfiguration"]


class PipelineConfiguration:
    """The pipeline calls of :class:`~clipper_core.connection.ClipperConnection`,
    over its management call ``_call``."""

    def _call(self, op: str, body: dict[str, Any] | None = None) -> Any:
        """Send one management call (``ClipperConnection._call``)."""
        raise NotImplementedError

    @staticmethod
    def _pipeline_body(
        name: str,
        stages: list[dict[str, Any]],
        edges: list[dict[str, Any]],
        slo_micros: int,
        default_output: str,
        input_type: str | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": name,
            "stages": stages,
            "edges": edges,
            "slo_micros": slo_micros,
            "default_output": default_output,
        }
        if input_type is not None:
            body["input_type"] = input_type
        return body

    def register_pipeline(
        self,
        name: str,
        stages: list[dict[str, Any]],
        edges: list[dict[str, Any]],
        slo_micros: int,
        default_output: str,
        *,
        input_type: str | None = None,
        api_keys: list[str] | None = None,
    ) -> None:
        """Register a pipeline and serve it at ``/<name>/predict`` (and OIP).

        Args:
            name: The pipeline's name (no application may have it).
            stages: ``{"name", "model", "version", "output_type", "combine"}`` each
                (only ``name`` and a ``model`` or a ``combine`` are required).
            edges: ``{"from", "to", "when"}`` each; ``when`` (optional) is a
                predicate on ``from``'s output, e.g. ``{"op": ">=", "value": 0.5}``.
            slo_micros: The end-to-end latency objective.
            default_output: Answered (flagged ``default: true``) when a stage
                cannot answer within what remains of the objective.
            input_type: What queries send; default: the entry stage's model's.
            api_keys: Require one of these (``X-Api-Key`` or ``Authorization:
                Bearer``) on the pipeline's queries, as an application's API
                keys do; default: no key needed.

        Raises:
            ClipperError: The graph is invalid (400) or names a model that is not
                deployed (404); the message names the stage or edge at fault.
        """
        body = self._pipeline_body(name, stages, edges, slo_micros, default_output, input_type)
        if api_keys is not None:
            body["api_keys"] = list(api_keys)
        self._call("add_pipeline", body)

    def update_pipeline(
        self,
        name: str,
        stages: list[dict[str, Any]],
        edges: list[dict[str, Any]],
        slo_micros: int,
        default_output: str,
        *,
        input_type: str | None = None,
        api_keys: list[str] | None = None,
    ) -> bool:
        """Replace a pipeline's description (the arguments of
        :meth:`register_pipeline`); whether the graph changed.  ``api_keys``
        replaces its keys (``[]``: none needed); None keeps them."""
        body = self._pipeline_body(name, stages, edges, slo_micros, default_output, input_type)
        if api_keys is not None:
            body["api_keys"] = list(api_keys)
        return bool(self._call("update_pipeline", body).get("changed"))

    def get_pipeline_info(self, name: str) -> dict[str, Any] | None:
        """The pipeline's description (as registered, optional fields filled in),
        or None."""
        info = self._call("get_pipeline", {"name": name})
        return dict(info) if info else None

    def get_all_pipelines(self, verbose: bool = False) -> list[Any]:
        """Every pipeline's name (``verbose``: its description)."""
        return list(self._call("get_all_pipelines", {"verbose": verbose}))

    def set_pipeline_api_keys(self, name: str, api_keys: list[str]) -> None:
        """Require one of ``api_keys`` on the pipeline's queries; an empty list
        lifts the requirement (see ``set_app_api_keys``)."""
        self._call("set_pipeline_api_keys", {"name": name, "api_keys": list(api_keys)})

    def delete_pipeline(self, name: str) -> None:
        """Stop serving a pipeline (its models stay deployed)."""
        self._call("delete_pipeline", {"name": name})
