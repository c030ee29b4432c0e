from typing import Any

import numpy as np

def parse_single_input(
    body: bytes, as_float32: bool, max_elements: int
) -> np.ndarray[Any, Any] | None: ...
