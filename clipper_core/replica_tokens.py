"""Per-model-version replica tokens: what a remote replica and its frontends share.

One token per model version authenticates both directions between a frontend and
a replica that runs on another host:

* the frontend sends it as ``authorization: Bearer <token>`` on every gRPC call
  to the replica, which refuses calls without it (``--token-file``);
* the replica sends it to fetch its model bundle from the management API
  (``GET /admin/bundle/<model>/<version>``, ``--bundle-token-file``).

It is not the management token: it opens one model version's bundle, nothing
else.  Every frontend must be able to present it, so it is not stored anywhere:
it is derived, ``HMAC-SHA256(secret, "<model>\\0<version>")``, from a random
secret in a private file (``<state_dir>/replica_secret`` unless
``ServerConfig.replica_secret_file`` names one; frontends sharing a store share
that file).  A token names one version; a new secret revokes them all.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from clipper_core.auth import keep_private
from clipper_core.errors import BadInput

__all__ = ["ReplicaTokens"]

_SECRET_BYTES = 32


class ReplicaTokens:
    """Derives and checks the replica tokens of one secret.

    Args:
        secret: At least 16 random bytes.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise BadInput("the replica secret must hold at least 16 bytes")
        self._secret = secret

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> ReplicaTokens:
        """The secret in ``path`` (hex, made 0600 if others could read it), or a new
        random one written there (0600).

        Raises:
            BadInput: The file exists but does not hold a secret.
        """
        p = Path(path)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            keep_private(p)  # an operator's copy, shared between frontends
            text = p.read_text().strip()
            try:
                return cls(bytes.fromhex(text))
            except ValueError:
                raise BadInput(f"{p} does not hold a replica secret (hex)") from None
        secret = secrets.token_bytes(_SECRET_BYTES)
        with os.fdopen(fd, "w") as f:
            f.write(secret.hex() + "\n")
        return cls(secret)

    def token(self, model: str, version: str) -> str:
        """The token of replicas of ``model:version`` (64 hex digits)."""
        message = f"{model}\0{version}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def check(self, model: str, version: str, presented: str | None) -> bool:
        """Whether ``presented`` is the token of ``model:version`` (constant time)."""
        if not presented:
            return False
        return hmac.compare_digest(presented.encode(), self.token(model, version).encode())
