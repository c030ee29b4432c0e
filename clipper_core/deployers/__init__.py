"""Deployers: put a model behind clipper_core in one call (Clipper's shape).

Each framework deployer imports its framework only when called.
"""

from clipper_core.deployers.onnx import deploy_onnx_model
from clipper_core.deployers.pyspark import deploy_pyspark_model
from clipper_core.deployers.python import create_endpoint, deploy_python_closure
from clipper_core.deployers.pytorch import deploy_pytorch_model
from clipper_core.deployers.sklearn import deploy_sklearn_model
from clipper_core.deployers.tensorflow import deploy_keras_model, deploy_tensorflow_model
from clipper_core.deployers.xgboost import deploy_xgboost_model

__all__ = [
    "create_endpoint",
    "deploy_keras_model",
    "deploy_onnx_model",
    "deploy_pyspark_model",
    "deploy_python_closure",
    "deploy_pytorch_model",
    "deploy_sklearn_model",
    "deploy_tensorflow_model",
    "deploy_xgboost_model",
]
