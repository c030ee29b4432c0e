"""Cutting a taken batch into calls that each fit one message to a container.

The batching queue counts inputs, not bytes: sixteen queries of 4 MB each make
a 64 MB batch, over the 64 MiB a container takes in one message, and the whole
batch failed with the message-size error although every query was within the
request limits.  A batch whose inputs add up to more than :data:`BATCH_BYTES` is
cut into consecutive calls, each under it, in queue order; an input too big on
its own still goes alone (and fails alone).  The calls after the first travel
as the dispatcher's extra batches (``SuspectBatch`` with no loss behind them):
sent on the same replica right after, handed back if it goes away first.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from clipper_core.dataplane.isolation import SuspectBatch
from clipper_core.dataplane.tensor_batch import TensorQuery
from clipper_core.structures import QueueEntry

__all__ = ["BATCH_BYTES", "cut_batch", "input_bytes"]

#: The most input bytes in one call: three quarters of the 64 MiB message limit
#: (``replica_client``), leaving room for the encoding (offsets, UTF-8).
BATCH_BYTES = 48 * 1024 * 1024

_ndarray = np.ndarray


def input_bytes(value: Any) -> int:
    """About how many bytes ``value`` takes in a PredictRequest."""
    t = type(value)
    if t is np.ndarray:
        return int(value.nbytes)
    if t is bytes or t is bytearray:
        return len(value)
    if t is str:
        return 4 * len(value)  # UTF-8, at worst
    if t is TensorQuery:
        arrays = value.arrays
        if len(arrays) == 1:  # the common case, without a generator
            return int(arrays[0].nbytes)
        return sum(int(a.nbytes) for a in arrays)
    return 0


def cut_batch(
    entries: list[QueueEntry], budget: int = BATCH_BYTES
) -> tuple[list[QueueEntry], list[SuspectBatch]]:
    """``entries`` as (the first call's, the later calls') within ``budget``."""
    total = 0
    for e in entries:  # the common case first: it all fits (~0.1 us an input)
        x = e.item.input
        t = type(x)
        if t is _ndarray:
            total += x.nbytes
        elif t is TensorQuery and len(x.arrays) == 1:
            total += x.arrays[0].nbytes
        else:
            total += input_bytes(x)
    if total <= budget:
        return entries, []
    chunks: list[list[QueueEntry]] = []
    current: list[QueueEntry] = []
    size = 0
    for e in entries:
        n = input_bytes(e.item.input)
        if current and size + n > budget:
            chunks.append(current)
            current, size = [], 0
        current.append(e)
        size += n
    if not chunks:
        return current, []
    chunks.append(current)
    later = []
    for chunk in chunks[1:]:
        batch = SuspectBatch(chunk, 0)
        batch.lost_at = -math.inf  # no loss behind it: lost, it splits as a plain batch
        later.append(batch)
    return chunks[0], later
