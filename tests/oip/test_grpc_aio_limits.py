"""The bounds of the gRPC port on ``grpc.aio`` (TLS, or ``transport="aio"``), as
far as gRPC offers them: the h2 transport's stream limit and connection cap.
Real servers and clients on 127.0.0.1."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from clipper_core._proto import oip_service_pb2 as pb
from clipper_core._proto import oip_service_pb2_grpc as pb_grpc
from clipper_core.admission import ClientLimiter, QueryGate
from clipper_core.auth import ApiKeys
from clipper_core.dataplane import DataPlane
from clipper_core.oip import InferenceService
from clipper_core.oip import h2_frames as h2
from clipper_core.oip.grpc_service import GrpcInferenceServer
from clipper_core.oip.h2_limits import H2Limits
from tests.oip.test_h2_hostile import Raw

pytestmark = pytest.mark.timeout(60)


def _announced_streams(port: int) -> int:
    """SETTINGS_MAX_CONCURRENT_STREAMS of the server's first SETTINGS (absent: none)."""
    c = Raw(port)
    c.read(lambda f: f[0] == h2.SETTINGS and not f[1] & h2.ACK)
    c.close()
    return c.server_settings.get(h2.S_MAX_CONCURRENT, 0)


async def _live(channel: grpc.aio.Channel) -> bool:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    reply = await stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
    return bool(reply.live)


def test_the_aio_transport_limits_streams_and_connections() -> None:
    """grpc.aio announced no stream limit and took any number of connections;
    now it announces the h2 transport's max_streams and refuses connections past
    max_connections (UNAVAILABLE)."""

    async def scenario() -> None:
        gate = QueryGate(ClientLimiter(), ApiKeys(), 64)
        service = InferenceService(
            DataPlane(cache_bytes=0), gate, default_timeout=1.0, ready=lambda: True
        )
        server = GrpcInferenceServer(service, port=0, transport="aio", max_connections=2)
        await server.start()
        # Each its own connection (channels would share one otherwise).
        opts = [("grpc.use_local_subchannel_pool", 1)]
        url = f"127.0.0.1:{server.port}"
        channels = [grpc.aio.insecure_channel(url, options=opts) for _ in range(3)]
        try:
            streams = await asyncio.to_thread(_announced_streams, server.port)
            assert streams == H2Limits().max_streams
            assert await _live(channels[0]) and await _live(channels[1])
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await _live(channels[2])
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            for channel in channels:
                await channel.close()
            await server.stop(0)

    asyncio.run(scenario())
