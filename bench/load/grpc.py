"""gRPC load: pre-serialized bytes with identity serializers on ``grpc.aio``
channels, closed loop or open loop."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from bench.load.common import ERR_TIMEOUT, GRPC_BASE, LoadRun, _now
from bench.payloads import DEFAULT_MARKER_GRPC


class GrpcLoad:
    """Closed or open loop over ``grpc.aio`` channels, raw bytes in and out."""

    def __init__(
        self,
        run: LoadRun,
        host: str,
        port: int,
        method: str,
        *,
        channels: int,
        concurrency: int,
        schedule: np.ndarray[Any, Any] | None,
        spin: bool,
    ) -> None:
        self.run = run
        self.target = f"{host}:{port}"
        self.method_name = method
        self.n_channels = max(1, channels)
        self.concurrency = concurrency
        self.schedule = schedule
        self.spin = spin
        self.channels: list[Any] = []
        self.methods: list[Any] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def prepare(self) -> None:
        import grpc

        for _ in range(self.n_channels):
            ch = grpc.aio.insecure_channel(
                self.target, options=[("grpc.use_local_subchannel_pool", 1)]
            )
            await asyncio.wait_for(ch.channel_ready(), 30)
            self.channels.append(ch)
            self.methods.append(ch.unary_unary(self.method_name))

    async def _one(self, method: Any, t0: float) -> None:
        import grpc

        run = self.run
        try:
            resp = await method(run.next_payload(), timeout=run.timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                run.rec.add(t0, _now(), ERR_TIMEOUT, False)
            else:
                run.rec.add(t0, _now(), GRPC_BASE - code.value[0], False)
        else:
            run.rec.add(t0, _now(), 200, DEFAULT_MARKER_GRPC in resp)
        finally:
            run.note_done()

    async def _client(self, i: int) -> None:
        run = self.run
        method = self.methods[i % len(self.methods)]
        while run.sent < run.max_requests and _now() < run.stop_at:
            run.sent += 1
            run.in_flight += 1
            await self._one(method, _now())

    async def go(self, start: float, horizon: float) -> None:
        run = self.run
        run.stop_at = start + horizon
        run.idle_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        if self.schedule is None:
            clients = [loop.create_task(self._client(i)) for i in range(self.concurrency)]
            _, pending = await asyncio.wait(clients, timeout=horizon + run.timeout + 1)
            for t in pending:
                t.cancel()
            return
        sched = (self.schedule + start).tolist()
        limit = min(len(sched), run.max_requests)
        i = 0
        k = 0
        while i < limit:
            t = _now()
            while i < limit and sched[i] <= t:
                run.sent += 1
                run.in_flight += 1
                run.rec.lag.append(_now() - sched[i])
                task = loop.create_task(self._one(self.methods[k % len(self.methods)], sched[i]))
                k += 1
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                i += 1
            if i >= limit:
                break
            delay = sched[i] - _now()
            if delay <= 0:
                continue
            if self.spin:
                await asyncio.sleep(delay - 0.0015 if delay > 0.002 else 0)
            else:
                await asyncio.sleep(delay)
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=run.timeout + 1)

    def close(self) -> None:
        for t in self.tasks:
            t.cancel()

    async def aclose(self) -> None:
        for ch in self.channels:
            await ch.close()
