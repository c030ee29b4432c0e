"""Models importable by the containers (pickled by reference)."""

from __future__ import annotations

import os
from typing import Any

from sklearn.linear_model import LinearRegression


class RecordingRegression(LinearRegression):
    """A linear regression that appends the size of every batch it predicts to a file."""

    def __init__(self, record_to: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.record_to = record_to

    def predict(self, X: Any) -> Any:
        if self.record_to:
            with open(self.record_to, "a") as f:
                f.write(f"{len(X)}\n")
                f.flush()
                os.fsync(f.fileno())
        return super().predict(X)
