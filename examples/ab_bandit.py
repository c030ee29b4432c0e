"""A/B testing two models with a bandit: Exp3 learns from feedback which one to serve.

Two classifiers answer "is x0 + x1 > 0?": ``model_a`` looks at x0 only (right about
3 times in 4), ``model_b`` at both (right about 39 times in 40).  The app starts by
sending half of the traffic to each; every answer's true label is fed back through
``POST /<app>/update``, and Exp3 moves the traffic to the better model.

Run it from the repository root (every port ephemeral, the OIP gRPC one too, and
the state in a temporary folder removed at stop: it runs beside a server, and
again):

    .venv/bin/python examples/ab_bandit.py
"""

from __future__ import annotations

import json
import random
import urllib.request
from typing import Any

from clipper_core import ClipperConnection
from clipper_core.server import BackgroundServer


def model_a(inputs: list[Any]) -> list[int]:
    return [int(x[0] > 0) for x in inputs]


def model_b(inputs: list[Any]) -> list[int]:
    return [int(x[0] + x[1] > 0.05) for x in inputs]


def post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def main() -> None:
    rng = random.Random(7)
    # query_port=0: every port ephemeral and a temporary state folder.
    with BackgroundServer(query_port=0, management_port=0) as bg:
        conn = ClipperConnection.for_server(bg.server)
        conn.register_application(
            "ab", "doubles", "0", 1_000_000, policy="exp3", policy_config={"eta": 0.2, "seed": 1}
        )
        conn.deploy_pickled("model_a", 1, "doubles", model_a)
        conn.deploy_pickled("model_b", 1, "doubles", model_b)
        conn.link_model_to_app("ab", "model_a")
        conn.link_model_to_app("ab", "model_b")
        print("app:", conn.get_app_info("ab"))

        served = {"model_a:1": 0, "model_b:1": 0}
        right = 0
        for step in range(1, 401):
            x = [rng.uniform(-1, 1), rng.uniform(-1, 1)]
            reply = post(f"{bg.query_url}/ab/predict", {"input": x})
            served[reply["model"]] += 1
            label = int(x[0] + x[1] > 0)
            right += reply["output"] == label
            post(f"{bg.query_url}/ab/update", {"uid": 0, "input": x, "label": label})
            if step % 100 == 0:
                total = sum(served.values())
                shares = ", ".join(f"{m} {n / total:.0%}" for m, n in served.items())
                print(f"queries {step - 99:3d}-{step}: {shares}; accuracy {right / total:.0%}")
                served = dict.fromkeys(served, 0)
                right = 0
        state = conn.get_selection_state("ab")
        assert state is not None
        probs = state["summary"]["probabilities"]
        print("Exp3 probabilities now:", {m: round(p, 3) for m, p in probs.items()})
        print("one query:", post(f"{bg.query_url}/ab/predict", {"input": [0.5, 0.2]}))


if __name__ == "__main__":
    main()
