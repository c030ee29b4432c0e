"""A started server exempts its long-lived objects from the cyclic collector
(``ServerConfig.gc_freeze``) and gives them back when it stops."""

from __future__ import annotations

import asyncio
import gc
import urllib.request
from pathlib import Path

from clipper_core.server import ClipperServer


def _scanned() -> int:
    # What a full collection walks: the three generations, not the frozen objects.
    return len(gc.get_objects())


def test_a_started_server_freezes_what_it_holds_and_thaws_it_at_stop(tmp_path: Path) -> None:
    async def main() -> None:
        gc.unfreeze()
        before = _scanned()
        async with ClipperServer(
            query_port=0, management_port=0, grpc_port=None, state_dir=str(tmp_path / "s")
        ) as server:
            # This process's objects, the server's among them (less the garbage
            # collected first): a full collection no longer walks them.
            assert gc.get_freeze_count() > 0
            assert _scanned() < before / 10

            # It serves as before; what requests make is collected as usual.
            def health() -> int:
                with urllib.request.urlopen(f"{server.query_url}/health", timeout=10) as resp:
                    return int(resp.status)

            assert await asyncio.get_running_loop().run_in_executor(None, health) == 200

            class Node:
                other: object = None

            a, b = Node(), Node()
            a.other, b.other = b, a  # a cycle made after the start
            del a, b
            assert gc.collect() >= 2
        assert gc.get_freeze_count() == 0  # given back at stop

    asyncio.run(main())


def test_gc_freeze_off_leaves_the_collector_alone(tmp_path: Path) -> None:
    async def main() -> None:
        gc.unfreeze()
        async with ClipperServer(
            query_port=0,
            management_port=0,
            grpc_port=None,
            state_dir=str(tmp_path / "s"),
            gc_freeze=False,
        ):
            assert gc.get_freeze_count() == 0

    asyncio.run(main())
