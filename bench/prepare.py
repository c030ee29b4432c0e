"""Setting up a run: start the server, find the target that the scenario's load
goes to (with its request bytes), and probe it once before measuring."""

from __future__ import annotations

import urllib.error
import urllib.request

from bench import load, payloads
from bench.measure import Options, Target
from bench.scenario import Scenario
from bench.serverproc import ClipperProcess


def _probe_http(host: str, port: int, data: bytes) -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        conn = await load.http_connect(host, port)
        try:
            return await load.http_exchange(conn, data, wait_s=60)
        finally:
            conn.close()

    import uvloop

    return uvloop.run(go())


def _probe_grpc(host: str, port: int, data: bytes) -> bytes:
    import grpc

    with grpc.insecure_channel(f"{host}:{port}") as ch:
        grpc.channel_ready_future(ch).result(timeout=30)
        method = ch.unary_unary(payloads.GRPC_MODEL_INFER)
        return bytes(method(data, timeout=60))


def probe(target: Target, data: bytes) -> bytes:
    """Send one request; fail loudly unless it succeeds; return the reply body."""
    if target.protocol == "oip-grpc":
        return _probe_grpc(target.host, target.port, data)
    status, body = _probe_http(target.host, target.port, data)
    if status != 200:
        raise RuntimeError(
            f"{target.protocol} probe answered {status}: {body[:500]!r}"
            + (
                " (is the OIP frontend installed in this tree?)"
                if target.protocol.startswith("oip") and status == 404
                else ""
            )
        )
    return body


def _check_oip_http(srv: ClipperProcess) -> None:
    url = f"http://{srv.host}:{srv.query_port}/v2/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            if resp.status == 200:
                return
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise RuntimeError(
                "OIP HTTP is not available: GET /v2/health/ready answered 404 (the OIP"
                " frontend has not landed in this tree yet)"
            ) from None
        raise


def start_server(sc: Scenario, opts: Options, name: str) -> ClipperProcess:
    env = dict(sc.server.env)
    if opts.pure_python:
        env["CLIPPER_NO_EXTENSIONS"] = "1"
    profile = opts.out / f"{name}-server.prof" if opts.profile == "cprofile" else None
    if profile is not None:
        profile.parent.mkdir(parents=True, exist_ok=True)
    srv = ClipperProcess(
        grpc=sc.load.protocol == "oip-grpc",
        profile=profile,
        env=env,
        admission=sc.server.admission,
        extra_args=sc.server.args,
    )
    try:
        srv.start()
    except BaseException:
        srv.stop()
        raise
    return srv


def target_for(sc: Scenario, srv: ClipperProcess, app: str) -> tuple[Target, list[bytes]]:
    protocol = sc.load.protocol
    if protocol == "oip-grpc":
        assert srv.grpc_port is not None
        port = srv.grpc_port
    else:
        port = srv.query_port
        if protocol.startswith("oip"):
            _check_oip_http(srv)
    target = Target(srv.host, port, protocol, app, srv.model_name(app))
    vectors = payloads.make_vectors(
        sc.model.input_type, sc.model.dim, sc.inputs.distinct, sc.inputs.seed
    )
    data = payloads.build_payloads(
        protocol,
        host=srv.host,
        port=port,
        app=app,
        model=app,  # OIP: /v2/models/<app>/infer, the app (SLO, default output)
        input_type=sc.model.input_type,
        vectors=vectors,
        shape=sc.load.oip_shape,
    )
    return target, data
