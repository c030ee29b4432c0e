"""What runs inside a model's process: the gRPC model server and the ``Model`` class.

A model container holds one model version and answers the frontend's ``Predict``
calls, one call per batch (see ``protos/container.proto``).  Start one with::

    python -m model_containers --model-name NAME --model-version 1 \\
        --input-type doubles --model-class mypkg.mymodule:MyModel

This package is deliberately light: it imports only the standard library, grpcio,
protobuf, numpy and cloudpickle, and never clipper_core or the frontend's
dependencies, so that it can be installed next to any model.
Importing ``model_containers`` itself loads only the ``Model`` base class.
"""

from __future__ import annotations

from model_containers.model import ClosureModel, Model, TensorSpec

__all__ = ["ClosureModel", "Model", "TensorSpec"]
