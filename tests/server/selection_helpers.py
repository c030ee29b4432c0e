"""Models and helpers of the model-selection end-to-end tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import Running, start_server

# -- models (closures: cloudpickle ships them by value) ------------------------------


def make_label(value: Any) -> Any:
    def predict(inputs: list[Any]) -> list[Any]:
        return [value for _ in inputs]

    return predict


def make_slow_label(value: Any, seconds: float) -> Any:
    def predict(inputs: list[Any]) -> list[Any]:
        import time

        time.sleep(seconds)
        return [value for _ in inputs]

    return predict


def make_cheap_classifier() -> Any:
    # Sure of itself far from 0, unsure near it: {"label", "confidence"} outputs.
    def predict(inputs: list[Any]) -> list[Any]:
        out = []
        for x in inputs:
            v = float(x[0])
            out.append({"label": int(v > 0), "confidence": 0.95 if abs(v) > 1.0 else 0.55})
        return out

    return predict


def make_expensive_classifier() -> Any:
    # [label, confidence] pairs.
    def predict(inputs: list[Any]) -> list[Any]:
        return [[int(float(x[0]) > 0.5), 0.99] for x in inputs]

    return predict


# -- fixtures -------------------------------------------------------------------------


def start_isolated(state_dir: Path) -> Running:
    """``start_server`` with every port ephemeral, the OIP gRPC one included where
    the server has one (its default is fixed), so servers can overlap."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPPER_GRPC_PORT", "0")
        return start_server(state_dir)


def make_app(r: Running, name: str, policy: str, config: dict[str, Any], *models: str) -> None:
    r.conn.register_application(
        name, "doubles", "-1", 2_000_000, policy=policy, policy_config=config
    )
    for m in models:
        r.conn.link_model_to_app(name, m)


def predict(r: Running, app: str, x: float, uid: int = 0) -> dict[str, Any]:
    status, reply = r.client.predict(app, {"input": [x], "uid": uid})
    assert status == 200, reply
    return reply


def update(r: Running, app: str, x: float, label: Any, uid: int = 0) -> dict[str, Any]:
    status, reply = r.client.post(f"/{app}/update", {"uid": uid, "input": [x], "label": label})
    assert status == 200, reply
    return reply
