"""What a replica's container says it serves, and the check that it serves the
model version the frontend sends it queries for.

A replica is known by its address, which says nothing about the model behind it:
a container of another model started at the address after the replica died (a
port reused, a pod IP handed on) would answer the replica's queries, and its
answers would go out labelled as the replica's model.  ``Metadata``
(``protos/container.proto``) names the model version a container serves;
``ReplicaClient`` compares it with :class:`ExpectedModel` before Predict goes over
a new connection, and when a lost replica answers again.  Only the name and the
version are compared: a standby promoted into a replica's place reports its own
replica id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from clipper_core.errors import ReplicaUnavailable
from clipper_core.replica_codec import input_type_name
from model_containers._proto import container_pb2 as pb

__all__ = ["ExpectedModel", "metadata_dict"]

log = logging.getLogger("clipper_core.replica_client")


def metadata_dict(meta: pb.ModelMetadata) -> dict[str, Any]:
    """A ``ModelMetadata`` reply as a dict (see ``ReplicaClient.metadata``)."""

    def specs(items: Any) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in items]

    return {
        "name": meta.name,
        "version": meta.version,
        "input_type": input_type_name(meta.input_type),
        "output_type": meta.output_type,
        "platform": meta.platform,
        "replica_id": meta.replica_id,
        "pid": meta.pid,
        "inputs": specs(meta.inputs),
        "outputs": specs(meta.outputs),
        "local_socket": meta.local_socket,
        "instance_token": meta.instance_token,
    }


class ExpectedModel:
    """The model version one replica must serve, and whether the container on its
    gRPC channel's current connection was found serving it.

    Args:
        name: The model; empty: any model (a client that only probes a container).
        version: Its version.
    """

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        #: Whether the container on the channel's current connection was checked.
        #: The client forgets it when it sees the channel not READY: the next
        #: connection may reach another process at the address.
        self.checked = False
        self._lock: asyncio.Lock | None = None
        # The last other model found, so that a replica polled while it serves
        # the wrong model is logged once, not on every poll.
        self._wrong: tuple[str, str] | None = None

    def verify(self, meta: Mapping[str, Any], who: str) -> None:
        """Check a container's ``Metadata`` (:func:`metadata_dict`); ``who``
        names the replica in the message.

        Raises:
            ReplicaUnavailable: It serves another model version (logged as an
                error the first time that model is found).
        """
        served = (str(meta["name"]), str(meta["version"]))
        if self.name and served != (self.name, self.version):
            self.checked = False
            expected = f"{self.name}:{self.version}"
            message = (
                f"{who} serves {served[0]}:{served[1]}, not {expected}: no query goes"
                f" to it until {expected} serves there again"
            )
            if served != self._wrong:
                self._wrong = served
                log.error("%s", message)
            raise ReplicaUnavailable(message)
        self._wrong = None
        self.checked = True

    async def ensure(self, check: Callable[[], Awaitable[object]]) -> None:
        """Run ``check`` (which calls :meth:`verify`) unless the connection was
        checked; concurrent callers wait for one run."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self.checked:
                await check()
