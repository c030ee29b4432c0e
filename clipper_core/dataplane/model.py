"""A model name, its deployed versions, and the version queries go to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from clipper_core.errors import NotFound

if TYPE_CHECKING:
    from clipper_core.dataplane.model_version import ModelVersion

__all__ = ["Model"]


@dataclass
class Model:
    """A model name with its deployed versions and the version queries go to."""

    name: str
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    current: str | None = None
    #: Versions being deleted: they answer what they hold, and take nothing new.
    draining: set[str] = field(default_factory=set)

    def version_for(self, version: str | None) -> ModelVersion | None:
        if version is None:
            current = self.current
            if current is None or current in self.draining:
                return None
            return self.versions.get(current)
        mv = self.versions.get(version)
        if mv is None or version in self.draining:
            raise NotFound(f"model {self.name!r} has no version {version!r}")
        return mv
