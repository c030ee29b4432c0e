"""The one exception tree of clipper_core.

Every error knows the HTTP status and the gRPC status code it maps to, so the
frontends translate errors in a single place.  The gRPC code is kept as the
``grpc.StatusCode`` member *name* so that this module imports nothing heavy.
"""

from __future__ import annotations


class ClipperError(Exception):
    """Base of every error that clipper_core raises on purpose."""

    http_status: int = 500
    grpc_code: str = "INTERNAL"
    #: Short machine-readable kind, used in JSON error bodies and metrics labels.
    kind: str = "internal"


class BadInput(ClipperError):
    """The request is malformed or does not match the expected input type."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"
    kind = "bad_input"


class NotFound(ClipperError):
    """An unknown application, model or version was named."""

    http_status = 404
    grpc_code = "NOT_FOUND"
    kind = "not_found"


class PayloadTooLarge(BadInput):
    """The request body exceeds the configured limit."""

    http_status = 413
    kind = "payload_too_large"


class Conflict(ClipperError):
    """The request conflicts with existing state (for example a duplicate version)."""

    http_status = 400
    grpc_code = "ALREADY_EXISTS"
    kind = "conflict"


class QueueFull(ClipperError):
    """A bounded queue is at capacity; the caller should answer 503 at once."""

    http_status = 503
    grpc_code = "RESOURCE_EXHAUSTED"
    kind = "queue_full"
    #: Seconds a client should wait before retrying (the ``Retry-After`` header).
    retry_after: float = 1.0


class QueueClosed(ClipperError):
    """The queue was closed (model version stopped or server shutting down)."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    kind = "queue_closed"


class DeadlineExceeded(ClipperError):
    """The request's deadline passed before it could be served."""

    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"
    kind = "deadline_exceeded"


class ModelError(ClipperError):
    """The model raised while predicting a batch; the message names the cause."""

    http_status = 500
    grpc_code = "INTERNAL"
    kind = "model_error"


class StoreBusy(ClipperError):
    """The state store stayed locked by another writer past its busy timeout (a
    second process on the same SQLite file); nothing was written."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    kind = "store_busy"


class StoreUnavailable(ClipperError):
    """The state store cannot be reached (a Redis server down or unreachable);
    nothing was read or written.  Queries go on: they need no store."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    kind = "store_unavailable"


class ReplicaUnavailable(ClipperError):
    """No healthy replica could serve the batch (crashed, stopped or unreachable)."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    kind = "replica_unavailable"


class NoLiveReplica(ReplicaUnavailable):
    """No model version that a query needs has a live replica, and none is
    restarting: the query is refused at once (not at its deadline), naming them.

    Attributes:
        models: The model versions (``name:version``) without a live replica.
    """

    def __init__(self, models: list[str]) -> None:
        self.models = list(models)
        verb = "has" if len(self.models) == 1 else "have"
        plural = "" if len(self.models) == 1 else "s"
        super().__init__(f"model{plural} {', '.join(self.models)} {verb} no live replica")


class NoOutputToScore(ClipperError):
    """A feedback label found no output to score: none of the models chosen for
    its input gave one (no live replica, overloaded, past the feedback timeout,
    not deployed, or no model linked).  Nothing was learned; the label can be
    sent again once a model answers.

    Attributes:
        unanswered: Model version (or model) -> why it gave no output.
    """

    http_status = 503
    grpc_code = "UNAVAILABLE"
    kind = "no_model"

    def __init__(self, app: str, unanswered: dict[str, str]) -> None:
        self.unanswered = dict(unanswered)
        why = "; ".join(f"{m}: {w}" for m, w in self.unanswered.items())
        super().__init__(
            f"application {app!r}: no model gave an output for this label to score"
            f" ({why or 'no model is linked'}); nothing was learned"
        )


class Overloaded(ClipperError):
    """Admission control refused the request: the queue is full, or its expected
    wait exceeds the request's remaining deadline.  Answered 503 with
    ``Retry-After`` at once, instead of queueing work that would miss anyway."""

    http_status = 503
    grpc_code = "RESOURCE_EXHAUSTED"
    kind = "overloaded"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        #: Seconds after which a retry may succeed (the ``Retry-After`` header).
        self.retry_after = retry_after


class RateLimited(ClipperError):
    """A per-client concurrency or rate limit was exceeded (HTTP 429)."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"
    kind = "rate_limited"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unauthorized(ClipperError):
    """No valid credentials came with the request (HTTP 401)."""

    http_status = 401
    grpc_code = "UNAUTHENTICATED"
    kind = "unauthorized"


class Forbidden(ClipperError):
    """The credentials are valid but do not grant this request (HTTP 403)."""

    http_status = 403
    grpc_code = "PERMISSION_DENIED"
    kind = "forbidden"


class ModelTimeout(ModelError):
    """A batch ran past the model's batch timeout; the replica is recycled."""

    http_status = 504
    grpc_code = "DEADLINE_EXCEEDED"
    kind = "model_timeout"


class InputCrashedModel(ModelError):
    """The input made the model container exit: a replica went away while it was
    alone in its call, after a batch holding it was lost the same way.  The same
    input is refused at once, without reaching a replica, for a while."""

    kind = "input_crashed_model"
