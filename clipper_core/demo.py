"""``make run``: start the embedded server, deploy an example model, query it.

The example model is a logistic-regression classifier trained here, now, with
numpy on generated data; it is deployed as a Python closure in its own process,
linked to an app with a 100 ms latency objective, and queried over HTTP.  The
server keeps serving (``curl`` it) until Ctrl-C, unless ``--once`` is given.

Ports: query 1337, management 1338, OIP gRPC 8001 (``--query-port``,
``--management-port``, ``--grpc-port``; 0 picks a free one, and with
``--query-port 0`` the gRPC port is a free one too unless given; ``--grpc-port
-1`` serves no gRPC).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
import time
import urllib.request
from typing import Any, Literal

import numpy as np
import uvloop

from clipper_core.connection import ClipperConnection
from clipper_core.deployers import deploy_python_closure
from clipper_core.errors import ClipperError
from clipper_core.server import ClipperServer


def train_classifier(seed: int = 0) -> tuple[np.ndarray, float]:
    """Fit logistic regression on two Gaussian blobs; return (weights, bias)."""
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(-1.0, 1.0, (500, 4)), rng.normal(1.0, 1.0, (500, 4))])
    y = np.concatenate([np.zeros(500), np.ones(500)])
    w = np.zeros(4)
    b = 0.0
    for _ in range(300):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        w -= 0.5 * (x.T @ (p - y)) / len(y)
        b -= 0.5 * float(np.mean(p - y))
    return w, b


def make_predict(w: np.ndarray, b: float) -> Any:
    def predict(inputs: list[np.ndarray]) -> list[int]:
        batch = np.stack(inputs)  # one matrix product per batch
        return [int(v) for v in (batch @ w + b > 0)]

    return predict


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


GrpcPort = int | Literal["auto"] | None


async def main(
    once: bool, query_port: int, management_port: int, grpc_port: GrpcPort = "auto"
) -> None:
    # The demo's store lives as long as the demo: nothing is left in /tmp.
    with tempfile.TemporaryDirectory(prefix="clipper-demo-") as state:
        await _serve(once, query_port, management_port, grpc_port, state)


async def _serve(
    once: bool, query_port: int, management_port: int, grpc_port: GrpcPort, state: str
) -> None:
    async with ClipperServer(
        query_port=query_port,
        management_port=management_port,
        grpc_port=grpc_port,
        state_dir=state,
    ) as server:
        print(
            f"serving: query {server.query_url}, management {server.management_url},"
            f" OIP gRPC port {server.grpc_port or 'none'}"
        )
        conn = ClipperConnection.for_server(server)
        w, b = train_classifier()
        loop = asyncio.get_running_loop()

        def configure() -> None:
            conn.register_application("demo", "doubles", "-1", 100_000)
            deploy_python_closure(conn, "logreg", 1, "doubles", make_predict(w, b))
            conn.link_model_to_app("demo", "logreg")

        started = time.monotonic()
        await loop.run_in_executor(None, configure)
        print(f"deployed model logreg:1 in {time.monotonic() - started:.2f} s")
        url = f"{server.query_url}/demo/predict"
        queries: list[dict[str, Any]] = [
            {"input": [1.5, 0.8, 1.1, 2.0]},
            {"input": [-1.2, -0.7, -2.0, -0.3]},
            {"input_batch": [[0.9, 1.0, 1.1, 1.2], [-0.9, -1.0, -1.1, -1.2]]},
        ]
        for q in queries:
            answer = await loop.run_in_executor(None, _post, url, q)
            print(f"POST /demo/predict {json.dumps(q)}\n  -> {json.dumps(answer)}")
        if once:
            return
        print(
            f"\nserving; try:\n  curl -X POST {url} -H 'Content-Type: application/json'"
            " -d '{\"input\": [1.0, 1.0, 1.0, 1.0]}'\nCtrl-C to stop"
        )
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="exit after the example queries")
    parser.add_argument("--query-port", type=int, default=1337, help="(1337; 0: a free one)")
    parser.add_argument("--management-port", type=int, default=1338, help="(1338; 0: a free one)")
    parser.add_argument(
        "--grpc-port",
        type=int,
        help="OIP gRPC port (8001, or a free one with --query-port 0; 0: a free one; -1: none)",
    )
    args = parser.parse_args()
    grpc: GrpcPort = "auto"
    if args.grpc_port is not None:
        grpc = None if args.grpc_port < 0 else args.grpc_port
    try:
        uvloop.run(main(args.once, args.query_port, args.management_port, grpc))
    except ClipperError as exc:  # a busy port, most often: one line, as the CLI says it
        sys.exit(
            f"make run: error: {exc} (is a server running already? `clipper stop`, or"
            " pick other ports with --query-port / --management-port)"
        )


if __name__ == "__main__":
    cli()
