"""The control plane: the one writer of desired state, and the reconcilers that
make the data plane and the containers match it (see ``design/control-plane.md``)."""

from __future__ import annotations

from clipper_core.control.model_defaults import ModelDefaults
from clipper_core.control.plane import ControlPlane
from clipper_core.control.reconcile import DataPlaneReconciler
from clipper_core.control.replicas import ReplicaReconciler
from clipper_core.control.tasks import BackgroundTasks

__all__ = [
    "BackgroundTasks",
    "ControlPlane",
    "DataPlaneReconciler",
    "ModelDefaults",
    "ReplicaReconciler",
]
