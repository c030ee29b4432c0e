"""Deployers: put a model behind clipper_core in one call (Clipper's shape)."""

from clipper_core.deployers.python import create_endpoint, deploy_python_closure

__all__ = ["create_endpoint", "deploy_python_closure"]
