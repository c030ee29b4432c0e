"""``exp3``: a bandit that queries one model, drawn with probability ∝ its weight.

After a label, the chosen model's weight is multiplied by ``exp(-η · loss / p)``,
where ``p`` was its probability when it was drawn (Clipper's Exp3): ``draw``
reports it and the data plane hands it back with the label, since other labels
may have changed the weights in between.  Weights are then scaled so the
largest is 1 and floored at ``min_weight``, so that a model that lost for a long
time comes back within reach when it becomes the better one.

With ``discount`` g < 1 every weight first becomes ``w ** g`` (the log-weights
shrink toward equal by g per label), so a loss counts for about ``1 / (1 - g)``
labels and the policy moves away from a model that degrades.

Options: ``eta`` (η, the learning rate; Clipper used 0.01), ``min_weight``,
``discount`` (1.0: no forgetting),
``loss_scale`` (numeric losses are ``|ŷ - y| / loss_scale`` capped at 1; labels
lose 0 or 1), ``seed`` (the draws' random seed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from clipper_core.selection import register_policy
from clipper_core.selection.base import (
    Odds,
    SelectionPolicy,
    State,
    check_number,
    confidence_of,
    forget,
    normalised_weights,
    probabilities,
    reweighted,
)
from clipper_core.selection.losses import loss


@register_policy
class Exp3(SelectionPolicy):
    """Exponential weights for exploration and exploitation, one model per query."""

    name = "exp3"
    defaults: ClassVar[Mapping[str, Any]] = {
        "eta": 0.01,
        "min_weight": 0.01,
        "discount": 1.0,
        "loss_scale": 1.0,
        "seed": None,
    }

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> None:
        super().check_config(config)
        check_number(config, "eta", low=0.0, low_open=True)
        check_number(config, "min_weight", low=0.0, high=1.0, low_open=True)
        check_number(config, "discount", low=0.0, high=1.0, low_open=True)
        check_number(config, "loss_scale", low=0.0, low_open=True)

    def initial_state(self) -> State:
        return {"weights": dict.fromkeys(self.models, 1.0), "updates": 0}

    def weights(self, state: State) -> dict[str, float]:
        return normalised_weights(self.models, state.get("weights", {}), self.config["min_weight"])

    def probabilities(self, state: State) -> dict[str, float]:
        """Each model's chance of being drawn for the next query."""
        return probabilities(self.weights(state))

    def select(self, state: State, x: Any) -> list[str]:
        return self.draw(state, x)[0]

    def draw(self, state: State, x: Any) -> tuple[list[str], dict[str, float]]:
        if not self.models:
            return [], {}
        probs = self.probabilities(state)
        chosen = self.rng.choices(self.models, weights=[probs[m] for m in self.models])
        return chosen, {m: probs[m] for m in chosen}

    def combine(self, state: State, x: Any, outputs: Mapping[str, Any]) -> tuple[Any, float]:
        model = next((m for m in self.models if m in outputs), next(iter(outputs)))
        y = outputs[model]
        return y, confidence_of(y)

    def observe(self, state: State, x: Any, y_true: Any, outputs: Mapping[str, Any]) -> State:
        return self.observe_drawn(state, x, y_true, outputs, {})

    def observe_drawn(
        self, state: State, x: Any, y_true: Any, outputs: Mapping[str, Any], odds: Odds
    ) -> State:
        eta = self.config["eta"]
        current = self.weights(state)
        probs = probabilities(current)  # what a model drawn just now would have had
        weights = forget(current, self.config["discount"])
        penalties: dict[str, float] = {}
        for m, y in outputs.items():
            if m not in weights:  # not linked now
                continue
            # The chance at the draw, not now: 1/p corrects for how often m is asked.
            p = odds.get(m) or probs[m]
            penalties[m] = eta * loss(y, y_true, self.config["loss_scale"]) / p
        return {
            **state,
            "weights": reweighted(
                self.models, state.get("weights"), weights, penalties, self.config["min_weight"]
            ),
            "updates": int(state.get("updates", 0)) + 1,
        }

    def describe(self, state: State) -> dict[str, Any]:
        return {"probabilities": self.probabilities(state)}
