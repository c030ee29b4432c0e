"""The Open Inference Protocol (KServe v2, as Triton and MLServer speak it).

REST on the query port (:mod:`clipper_core.oip.http`) and gRPC on its own port
(:mod:`clipper_core.oip.grpc_service`), both over :class:`InferenceService`
(:mod:`clipper_core.oip.service`), which sends requests through the same data
plane as Clipper's REST API.  Tensors are parsed and encoded in
:mod:`clipper_core.oip.tensors`.
"""

from __future__ import annotations

from clipper_core.oip.service import InferenceService

__all__ = ["InferenceService"]
