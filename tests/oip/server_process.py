"""A clipper_core server in its own process, for the OIP tests.

``python -m tests.oip.server_process STATE_DIR`` binds ephemeral ports (query,
management, OIP gRPC on the default transport, and a second OIP gRPC port on
``grpc.aio`` over the same service, so the gRPC tests run against both), prints
them as one JSON line on stdout, and serves until SIGTERM or SIGINT, then stops
gracefully (its model containers included).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import uvloop

from clipper_core.oip.grpc_service import GrpcInferenceServer
from clipper_core.server import ClipperServer


async def serve(state_dir: str) -> None:
    server = ClipperServer(query_port=0, management_port=0, grpc_port=0, state_dir=state_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    aio = GrpcInferenceServer(
        server.oip, port=0, transport="aio", max_message_bytes=server.config.max_body_size
    )
    await aio.start()
    ports = {
        "grpc_aio": aio.port,
        "query": server.query_port,
        "management": server.management_port,
        "grpc": server.grpc_port,
    }
    print(json.dumps(ports), flush=True)
    try:
        await stop.wait()
    finally:
        await aio.stop()
        await server.stop()


if __name__ == "__main__":
    uvloop.run(serve(sys.argv[1]))
