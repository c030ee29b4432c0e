"""The status a Predict fails with, whatever the transport."""

from __future__ import annotations

import grpc


class PredictFailure(Exception):
    """Ends a Predict with a status: abort() on gRPC, an error frame on the local socket."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
