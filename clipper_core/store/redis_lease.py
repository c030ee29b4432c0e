"""The replica lease on Redis: ``SET key owner NX PX ttl`` takes it, a script
that extends it only while the owner is still ours renews it, and one that
deletes it only then releases it (see ``clipper_core.control.lease``)."""

from __future__ import annotations

import asyncio
import time
from typing import cast

import redis

__all__ = ["RedisLease"]

# Extend (or delete) the lease only if this owner still holds it: a holder that
# paused past its lease must not extend (or drop) its successor's.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""

#: The share of the time to live after which a holder stops believing it holds
#: the lease, should it not have renewed it (clock drift, a slow call).
SAFETY = 0.8


class RedisLease:
    """A lease held by at most one owner at a time, expiring ``ttl`` seconds
    after its last renewal.  Calls run the synchronous client in a thread.

    Args:
        client: The store's client.
        key: The lease's key.
        owner: This process's unique name (host, pid and a random part).
        ttl: Seconds the lease lasts without renewal.
    """

    def __init__(self, client: redis.Redis, key: str, owner: str, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0, got {ttl!r}")
        self._client = client
        self._key = key
        self._owner = owner
        self._ttl_ms = max(1, int(ttl * 1000))
        self._ttl = ttl
        self._valid_until = 0.0
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def owner(self) -> str:
        return self._owner

    def held(self) -> bool:
        return time.monotonic() < self._valid_until

    def holder(self) -> str | None:
        """Who holds the lease now (None: nobody)."""
        return cast("str | None", self._client.get(self._key))

    def _mark(self, ok: bool, started: float) -> bool:
        self._valid_until = started + SAFETY * self._ttl if ok else 0.0
        return ok

    async def acquire(self) -> bool:
        started = time.monotonic()

        def take() -> bool:
            if self._client.set(self._key, self._owner, nx=True, px=self._ttl_ms):
                return True
            return bool(self._renew(keys=[self._key], args=[self._owner, self._ttl_ms]))

        return self._mark(await asyncio.to_thread(take), started)

    async def renew(self) -> bool:
        started = time.monotonic()
        ok = await asyncio.to_thread(
            self._renew, keys=[self._key], args=[self._owner, self._ttl_ms]
        )
        return self._mark(bool(ok), started)

    async def release(self) -> None:
        self._valid_until = 0.0
        await asyncio.to_thread(self._release, keys=[self._key], args=[self._owner])
