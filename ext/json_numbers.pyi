from typing import Any

import numpy as np

def parse_single_input(
    body: bytes, as_float32: bool, max_elements: int
) -> np.ndarray[Any, Any] | None: ...
def parse_oip_request(
    body: bytes, max_elements: int
) -> tuple[str | None, list[tuple[str, str, tuple[int, ...], np.ndarray[Any, Any]]]] | None: ...
