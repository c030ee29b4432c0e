"""The learned states of an app's selection policy, one per user id, bounded.

A client chooses the ``uid`` of its queries and feedback, so the table of
per-user states would grow with every new id it sends.  :class:`UserStates` keeps
the app-wide state (``GLOBAL_UID``) and at most ``capacity`` users besides it;
past that the least recently used user is forgotten, in memory and (through
``on_evict``) in the store, and starts again from the app-wide state, as a new
user does.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

import orjson

from clipper_core.errors import ClipperError
from clipper_core.selection import State

__all__ = ["GLOBAL_UID", "MAX_USER_STATES", "UserStates", "json_copy"]

#: The user id of the app-wide state, which users without a state of their own read.
GLOBAL_UID = 0
#: Users with a state of their own per app, by default (each state is ~1 KB).
MAX_USER_STATES = 100_000


class UserStates(MutableMapping[int, State]):
    """``uid -> state``, the least recently used user forgotten past ``capacity``.

    Args:
        states: The states to start from (those stored); a surplus is trimmed
            without ``on_evict`` (it is called only when a new user pushes one out).
        capacity: Users kept besides the app-wide state.
        on_evict: Told the uid of each user forgotten.
    """

    def __init__(
        self,
        states: Mapping[int, State] | None,
        capacity: int = MAX_USER_STATES,
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.on_evict = on_evict
        self.evicted = 0
        self._global: State | None = None
        self._users: OrderedDict[int, State] = OrderedDict()
        for uid, state in (states or {}).items():
            self._put(uid, state)
        while len(self._users) > capacity:
            self._users.popitem(last=False)

    def get(self, uid: int, default: State | None = None) -> State | None:  # type: ignore[override]
        """``uid``'s state (it becomes the most recently used), else ``default``."""
        if uid == GLOBAL_UID:
            return self._global if self._global is not None else default
        state = self._users.get(uid)
        if state is None:
            return default
        self._users.move_to_end(uid)
        return state

    def __getitem__(self, uid: int) -> State:
        state = self.get(uid)
        if state is None:
            raise KeyError(uid)
        return state

    def __delitem__(self, uid: int) -> None:
        if uid == GLOBAL_UID and self._global is not None:
            self._global = None
        else:
            del self._users[uid]

    def __setitem__(self, uid: int, state: State) -> None:
        self._put(uid, state)
        while len(self._users) > self.capacity:
            old, _ = self._users.popitem(last=False)
            self.evicted += 1
            if self.on_evict is not None:
                self.on_evict(old)

    def _put(self, uid: int, state: State) -> None:
        if uid == GLOBAL_UID:
            self._global = state
        else:
            self._users[uid] = state
            self._users.move_to_end(uid)

    def __contains__(self, uid: object) -> bool:
        return (uid == GLOBAL_UID and self._global is not None) or uid in self._users

    def __len__(self) -> int:
        return len(self._users) + (self._global is not None)

    def __iter__(self) -> Iterator[int]:
        if self._global is not None:
            yield GLOBAL_UID
        yield from self._users

    def clear(self) -> None:
        self._global = None
        self._users.clear()


def json_copy(state: Any) -> State:
    """A private copy of a policy's state, which also proves that it is storable."""
    # orjson first (the feedback path's hot spot); it writes NaN as null and
    # refuses what json would convert (int keys), so any difference takes the
    # strict path, which converts or names the problem.
    try:
        fast = orjson.loads(orjson.dumps(state))
    except TypeError:
        fast = None
    if isinstance(fast, dict) and fast == state:
        return fast
    try:
        copied = json.loads(json.dumps(state, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ClipperError(f"the policy returned a state that is not JSON: {exc}") from None
    if not isinstance(copied, dict):
        raise ClipperError(f"the policy returned a {type(copied).__name__}, not a state object")
    return copied
