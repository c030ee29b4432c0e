"""The standard gRPC health service (``grpc.health.v1.Health``) of a model container.

A servicer of the project's own, over the code generated from ``protos/health.proto``,
so that neither side depends on grpcio-health-checking (each of its releases runs on
a single protobuf major version).  On the wire it is the standard service: Kubernetes'
gRPC probes, ``grpc_health_probe`` and grpcio-health-checking's ``HealthStub`` talk
to it unchanged.

``Check`` answers the current status of a service, and fails with NOT_FOUND for a
service never set.  ``Watch`` sends the current status (SERVICE_UNKNOWN for a service
never set), then every change, until the client cancels or the server stops.  Watch
streams hold no thread while they wait: the sync server calls ``Watch`` in its
non-blocking mode (grpcio's ``experimental_non_blocking`` hook, which its own
health servicer uses) and each change is sent from the thread that sets it.  A grpcio
without that hook calls ``Watch`` the blocking way, and then each stream waits on
a worker thread of its own instead.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from model_containers._proto import health_pb2

__all__ = ["NOT_SERVING", "SERVICE_UNKNOWN", "SERVING", "HealthServicer", "Status"]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

#: A serving status: one of the constants above (a protobuf enum value, an int).
Status = health_pb2.HealthCheckResponse.ServingStatus

_SERVICE = "grpc.health.v1.Health"

#: Sends one response on a Watch stream; None ends the stream.
_Send = Callable[[Any], None]


class _BlockingStream:
    """The responses of one Watch stream, for a server that calls Watch the blocking way."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._queue: collections.deque[Any] = collections.deque()
        self._open = True

    def send(self, response: Any) -> None:
        with self._ready:
            if response is None:
                self._open = False
            else:
                self._queue.append(response)
            self._ready.notify()

    def __iter__(self) -> Iterator[Any]:
        while True:
            with self._ready:
                while not self._queue and self._open:
                    self._ready.wait()
                if not self._queue:
                    return
                response = self._queue.popleft()
            yield response


class HealthServicer:
    """Per-service serving status, answered over ``grpc.health.v1.Health``.

    Args:
        thread_pool: Where the sync server starts Watch calls (each returns at once);
            None uses the server's own pool.
    """

    def __init__(self, thread_pool: ThreadPoolExecutor | None = None) -> None:
        self._lock = threading.Lock()
        self._status: dict[str, Status] = {}
        self._watchers: dict[str, set[_Send]] = {}
        self._shut_down = False
        self._thread_pool = thread_pool

    def set_status(self, service: str, status: Status) -> None:
        """Set ``service``'s status (``""``: the server as a whole) and tell its watchers.

        Ignored after :meth:`enter_graceful_shutdown`.
        """
        with self._lock:
            if not self._shut_down:
                self._set(service, status)

    def status(self, service: str) -> Status | None:
        """The status last set for ``service``, or None if it was never set."""
        with self._lock:
            return self._status.get(service)

    def enter_graceful_shutdown(self) -> None:
        """Report NOT_SERVING for every service from now on; later sets are ignored."""
        with self._lock:
            if self._shut_down:
                return
            self._shut_down = True
            for service in list(self._status):
                self._set(service, NOT_SERVING)

    def _set(self, service: str, status: Status) -> None:
        # Under the lock, so that each watcher sees the changes in order.
        self._status[service] = status
        response = health_pb2.HealthCheckResponse(status=status)
        for send in list(self._watchers.get(service, ())):
            send(response)

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        """The ``Check`` RPC: the service's status, or NOT_FOUND if it is unknown."""
        status = self.status(request.service)
        if status is None:
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details(f"unknown service {request.service!r}")
            return health_pb2.HealthCheckResponse()
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(
        self, request: Any, context: grpc.ServicerContext, send: _Send | None = None
    ) -> Iterator[Any] | None:
        """The ``Watch`` RPC: the status now, then each change, until cancelled.

        Called with ``send`` (the non-blocking mode), registers it and returns None;
        called without, returns an iterator over the stream's responses.
        """
        stream = None
        if send is None:
            stream = _BlockingStream()
            send = stream.send
        service, watcher = request.service, send
        with self._lock:
            status = self._status.get(service, SERVICE_UNKNOWN)
            watcher(health_pb2.HealthCheckResponse(status=status))
            self._watchers.setdefault(service, set()).add(watcher)

        def forget() -> None:
            with self._lock:
                watchers = self._watchers.get(service)
                if watchers is not None:
                    watchers.discard(watcher)
                    if not watchers:
                        del self._watchers[service]
            watcher(None)

        if not context.add_callback(forget):
            forget()  # the call has already ended
        return iter(stream) if stream is not None else None

    def add_to_server(self, server: grpc.Server) -> None:
        """Serve ``grpc.health.v1.Health`` from this servicer on ``server`` (a sync one)."""
        watch = functools.partial(self.Watch)
        # grpcio's sync server looks these attributes up on the method's behaviour.
        watch.experimental_non_blocking = True  # type: ignore[attr-defined]
        watch.experimental_thread_pool = self._thread_pool  # type: ignore[attr-defined]
        request = health_pb2.HealthCheckRequest.FromString
        response = health_pb2.HealthCheckResponse.SerializeToString
        handlers = {
            "Check": grpc.unary_unary_rpc_method_handler(
                self.Check, request_deserializer=request, response_serializer=response
            ),
            "Watch": grpc.unary_stream_rpc_method_handler(
                watch, request_deserializer=request, response_serializer=response
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_SERVICE, handlers),))
