"""Model selection: which linked models answer a query, and how they are combined.

Each policy is one module in :mod:`clipper_core.selection.policies` that defines a
:class:`SelectionPolicy` subclass decorated with :func:`register_policy`; the
modules there are imported on first use, so adding a policy touches one file.

Built in: ``single`` (the default: the first linked model), ``ensemble``,
``exp3``, ``exp4``, ``epsilon_greedy``, ``ucb1`` and ``cascade``.
"""

from __future__ import annotations

import importlib
import pkgutil
import random
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from clipper_core.errors import BadInput
from clipper_core.selection.base import (
    SelectionPolicy,
    State,
    combine_outputs,
    confidence_of,
    split_output,
)
from clipper_core.selection.losses import loss

__all__ = [
    "SelectionPolicy",
    "State",
    "combine_outputs",
    "confidence_of",
    "get_policy_class",
    "loss",
    "make_policy",
    "policy_names",
    "register_policy",
    "split_output",
    "validate_policy",
]

_REGISTRY: dict[str, type[SelectionPolicy]] = {}
_discovered = False

_P = TypeVar("_P", bound=type[SelectionPolicy])


def register_policy(cls: _P) -> _P:
    """Class decorator: make a policy available under ``cls.name``.

    Raises:
        ValueError: The name is empty or taken by another class.
    """
    name = cls.name
    if not name:
        raise ValueError(f"{cls.__qualname__} has no policy name")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(f"policy {name!r} is already registered by {existing.__qualname__}")
    _REGISTRY[name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    from clipper_core.selection import policies

    for info in pkgutil.iter_modules(policies.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{policies.__name__}.{info.name}")
    _discovered = True


def policy_names() -> list[str]:
    """The names of every registered policy, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get_policy_class(name: str) -> type[SelectionPolicy]:
    """The policy class registered as ``name``.

    Raises:
        BadInput: No such policy (the message lists the known ones).
    """
    _discover()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise BadInput(
            f"unknown selection policy {name!r}; expected one of {', '.join(sorted(_REGISTRY))}"
        )
    return cls


def validate_policy(name: str, config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The policy's configuration with its defaults; raise BadInput when invalid."""
    return get_policy_class(name).validate_config(config or {})


def make_policy(
    name: str,
    models: Sequence[str],
    config: Mapping[str, Any] | None = None,
    rng: random.Random | None = None,
) -> SelectionPolicy:
    """An instance of policy ``name`` bound to ``models``."""
    return get_policy_class(name)(models, config, rng)
