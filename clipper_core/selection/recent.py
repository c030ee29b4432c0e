"""Which model versions answered each recent (user, input): what feedback scores.

A label fed back through ``POST /<app>/update`` must score the models that
answered that input, not a fresh choice, and must teach the state that made the
choice.  Clipper's ``/predict`` carries no uid while its ``/update`` does, so a
label for uid 7 usually follows a query decided by the app-wide state (uid 0):
:meth:`RecentSelections.find` falls back to the selection made without a uid, and
says which uid's state made it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from clipper_core.selection.base import Odds
from clipper_core.selection.user_states import GLOBAL_UID

__all__ = ["RECENT_SELECTIONS", "RecentSelections", "Selection"]

#: How many (user, input) → models choices an app remembers for feedback.
RECENT_SELECTIONS = 8192


def _digest(key: bytes) -> bytes:
    # Inputs can be large; a fixed-size digest bounds the table's memory.
    return hashlib.blake2b(key, digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class Selection:
    """The models asked for one input, and the uid whose state chose them."""

    uid: int
    #: (name, version) of each model queried.
    models: tuple[tuple[str, str], ...]
    #: The chance each drawn model had (``SelectionPolicy.draw``), for Exp3's 1/p.
    odds: Odds


class RecentSelections:
    """``(uid, input) -> Selection``, the oldest forgotten past ``capacity``."""

    def __init__(self, capacity: int = RECENT_SELECTIONS) -> None:
        self.capacity = capacity
        self._table: OrderedDict[tuple[int, bytes], Selection] = OrderedDict()

    def remember(
        self,
        uid: int,
        key: bytes,
        models: tuple[tuple[str, str], ...],
        odds: Odds,
    ) -> None:
        """``uid``'s state chose ``models`` (drawn with ``odds``) for the input
        whose key is ``key``."""
        if not models:
            return
        slot = (uid, _digest(key))
        self._table[slot] = Selection(uid, models, odds)
        self._table.move_to_end(slot)
        while len(self._table) > self.capacity:
            self._table.popitem(last=False)

    def find(self, uid: int, key: bytes) -> Selection | None:
        """The selection a label from ``uid`` for this input scores: ``uid``'s own,
        else the one made without a uid (its ``uid`` is then the global one)."""
        digest = _digest(key)
        found = self._table.get((uid, digest))
        if found is None and uid != GLOBAL_UID:
            found = self._table.get((GLOBAL_UID, digest))
        return found

    def clear(self) -> None:
        self._table.clear()

    def __len__(self) -> int:
        return len(self._table)
