"""Per-model-version replica tokens: what a remote replica and its frontends share.

Two tokens per model version, one for each direction between a frontend and a
replica that runs on another host:

* the **call token** (:meth:`ReplicaTokens.token`): the frontend sends it as
  ``authorization: Bearer <token>`` on every gRPC call to the replica, which
  refuses calls without it (``--token-file``).  Whoever answers at a replica's
  address with a certificate the frontend trusts receives it, so it opens
  nothing on the frontend;
* the **bundle token** (:meth:`ReplicaTokens.bundle_token`): the replica's host
  sends it to fetch the model's bundle from the management API
  (``GET /admin/bundle/<model>/<version>``, ``--bundle-token-file``).  The
  frontend never sends it anywhere;
* the **registration token** (:meth:`ReplicaTokens.register_token`): the
  replica's host registers its address with it (``register_replica`` of that
  version only, ``--register-token-file``), so that it needs no management
  token, which would let it deploy code.

Neither is the management token.  Every frontend must be able to present them,
so they are not stored anywhere: they are derived with HMAC-SHA256 from a random
secret in a private file (``<state_dir>/replica_secret`` unless
``ServerConfig.replica_secret_file`` names one; frontends sharing a store share
that file): the call token is ``HMAC(secret, "<model>\\0<version>")`` (as
before the split, so that running replicas keep their ``--token-file``), the
others ``HMAC(HMAC(secret, <purpose>), "<model>\\0<version>")``, so that no
model or version name makes one purpose's token another's.  A token names one
version; a new secret revokes them all.
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
        """The call token of replicas of ``model:version`` (64 hex digits): what
        frontends send and replicas check."""
        return _derive(self._secret, model, version)

    def bundle_token(self, model: str, version: str) -> str:
        """The token that fetches the bundle of ``model:version`` (64 hex digits)."""
        return _derive(self._bundle_key, model, version)

    def check_bundle(self, model: str, version: str, presented: str | None) -> bool:
        """Whether ``presented`` is the bundle token of ``model:version`` (constant time)."""
        return _matches(presented, self.bundle_token(model, version))

    def local_token(self, model: str, version: str) -> str:
        """The token that the local manager's replicas of ``model:version`` require
        on their plaintext port (64 hex digits)."""
        return _derive(self._purpose_key(b"local"), model, version)

    def register_token(self, model: str, version: str) -> str:
        """The token that registers replicas of ``model:version`` (64 hex digits)."""
        return _derive(self._purpose_key(b"register"), model, version)

    def check_register(self, model: str, version: str, presented: str | None) -> bool:
        """Whether ``presented`` is the registration token of ``model:version``."""
        return _matches(presented, self.register_token(model, version))

    @property
    def _bundle_key(self) -> bytes:
        return self._purpose_key(b"bundle")

    def _purpose_key(self, purpose: bytes) -> bytes:
        return hmac.new(self._secret, b"clipper " + purpose + b" token", hashlib.sha256).digest()


def _derive(key: bytes, model: str, version: str) -> str:
    message = f"{model}\0{version}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _matches(presented: str | None, expected: str) -> bool:
    if not presented:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())
