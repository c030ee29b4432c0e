"""Access control: the management token and per-application API keys.

* The management API requires ``Authorization: Bearer <token>`` on every call when
  a token is configured (``ServerConfig.admin_token``, by default the
  ``CLIPPER_ADMIN_TOKEN`` environment variable).  Missing or wrong: 401 JSON.
* An application may require API keys on its query route (``api_keys`` in its
  configuration).  The client sends one as ``X-Api-Key: <key>`` or
  ``Authorization: Bearer <key>``.  No key, or a key unknown to the server: 401;
  a key of another application: 403.

Secrets are compared in constant time (:func:`hmac.compare_digest` over SHA-256
digests, so that neither content nor length leaks through timing).  API keys are
kept, in memory and in the state store, only as SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

from clipper_core.errors import BadInput, Forbidden, Unauthorized

__all__ = [
    "ADMIN_TOKEN_ENV",
    "API_KEYS_NAMESPACE",
    "ApiKeys",
    "bearer_token",
    "check_admin",
    "hash_api_key",
    "keep_private",
    "presented_api_key",
    "secret_matches",
]

log = logging.getLogger("clipper_core.auth")

#: The environment variable the server and the clients read the admin token from.
ADMIN_TOKEN_ENV = "CLIPPER_ADMIN_TOKEN"

#: Set to 1 to run the management API without any token (loud, for sandboxes only).
NO_ADMIN_TOKEN_ENV = "CLIPPER_INSECURE_NO_ADMIN_TOKEN"

#: The file in the state folder that holds the token generated on first start (0600).
ADMIN_TOKEN_FILE = "admin_token"

#: StateStore kv namespace: application name -> list of SHA-256 hex digests.
API_KEYS_NAMESPACE = "auth.api_keys"

#: Shortest API key accepted (a short key can be guessed).
MIN_API_KEY_LENGTH = 16

#: What a 401 answer carries, per RFC 6750.
WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="clipper_core"'}


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def secret_matches(presented: str | None, expected: str) -> bool:
    """Whether ``presented`` equals ``expected``, in constant time."""
    if presented is None:
        return False
    return hmac.compare_digest(_digest(presented), _digest(expected))


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    auth = headers.get("authorization")
    if not auth:
        return None
    scheme, _, token = auth.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def check_admin(headers: Mapping[str, str], token: str | None) -> None:
    """Let a management call through, or raise.

    Args:
        headers: The request's headers (lower-cased names).
        token: The configured token; None or empty disables the check.

    Raises:
        Unauthorized: A token is configured and the request does not carry it.
    """
    if not token:
        return
    presented = bearer_token(headers)
    if presented is None:
        raise Unauthorized("management calls need an 'Authorization: Bearer <token>' header")
    if not secret_matches(presented, token):
        raise Unauthorized("the management token is not valid")


def hash_api_key(key: str) -> str:
    """The SHA-256 hex digest that stands for ``key`` in memory and in the store."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def validate_api_keys(keys: object) -> list[str]:
    """The API keys of an application's configuration, checked.

    Raises:
        BadInput: Not a list of strings of at least :data:`MIN_API_KEY_LENGTH`
            printable ASCII characters without spaces.
    """
    if keys is None:
        return []
    if isinstance(keys, str) or not isinstance(keys, list):
        raise BadInput("api_keys must be a list of strings")
    out: list[str] = []
    for key in keys:
        if not isinstance(key, str):
            raise BadInput("api_keys must be a list of strings")
        if len(key) < MIN_API_KEY_LENGTH:
            raise BadInput(f"an API key must have at least {MIN_API_KEY_LENGTH} characters")
        if not key.isascii() or not key.isprintable() or " " in key:
            raise BadInput("an API key must be printable ASCII without spaces")
        out.append(key)
    return out


def presented_api_key(headers: Mapping[str, str]) -> str | None:
    """The API key a query carries: ``X-Api-Key``, else a Bearer token."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    return bearer_token(headers)


class ApiKeys:
    """Which applications require API keys, and the digests of their keys."""

    def __init__(self) -> None:
        self._by_app: dict[str, tuple[bytes, ...]] = {}
        self._all: set[bytes] = set()
        # What a name is, for the errors' wording: pipelines share the namespace.
        self._pipelines: set[str] = set()

    def set_digests(self, app: str, digests: Iterable[str], *, pipeline: bool = False) -> None:
        """Require one of these keys (SHA-256 hex digests) on ``app``'s queries
        (an application's, or a ``pipeline``'s); none at all lifts the requirement."""
        raw = tuple(bytes.fromhex(d) for d in digests)
        if raw:
            self._by_app[app] = raw
        else:
            self._by_app.pop(app, None)
        if pipeline and raw:
            self._pipelines.add(app)
        else:
            self._pipelines.discard(app)
        self._all = {d for ds in self._by_app.values() for d in ds}

    def remove(self, app: str) -> None:
        self.set_digests(app, ())

    def required(self, app: str) -> bool:
        """Whether ``app`` requires an API key."""
        return app in self._by_app

    def any_required(self) -> bool:
        """Whether some application requires an API key."""
        return bool(self._by_app)

    def known(self, key: str) -> bool:
        """Whether ``key`` is the key of some application (constant time per key)."""
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found = False
        for d in self._all:
            found |= hmac.compare_digest(d, digest)
        return found

    def check(self, app: str, headers: Mapping[str, str]) -> None:
        """Let a query of ``app`` through, or raise.

        Raises:
            Unauthorized: The app requires a key and none, or an unknown one, came.
            Forbidden: The key belongs to another application.
        """
        wanted = self._by_app.get(app)
        if wanted is None:
            return
        key = presented_api_key(headers)
        what = "pipeline" if app in self._pipelines else "application"
        if key is None:
            raise Unauthorized(
                f"{what} {app!r} requires an API key ('X-Api-Key: <key>' or"
                " 'Authorization: Bearer <key>')"
            )
        digest = _digest(key)
        ok = False
        for candidate in wanted:  # every candidate compared: no early exit
            ok |= hmac.compare_digest(digest, candidate)
        if ok:
            return
        if digest in self._all:
            raise Forbidden(f"this API key does not grant access to {what} {app!r}")
        raise Unauthorized("the API key is not valid")


def admin_token_from_env() -> str | None:
    """The admin token of the environment (``CLIPPER_ADMIN_TOKEN``), or None when
    the variable is unset.  Set but empty (or blank) gives ``""``, which the
    server refuses: an empty token must never mean "no authentication"."""
    value = os.environ.get(ADMIN_TOKEN_ENV)
    return None if value is None else value.strip()


def no_admin_token_from_env() -> bool:
    """Whether ``CLIPPER_INSECURE_NO_ADMIN_TOKEN`` asks for a management API
    without a token."""
    return os.environ.get(NO_ADMIN_TOKEN_ENV, "").strip().lower() in ("1", "true", "yes")


def admin_token_path(state_dir: str | os.PathLike[str]) -> Path:
    """Where the server keeps the token it generated (see :func:`load_or_create_admin_token`)."""
    return Path(state_dir) / ADMIN_TOKEN_FILE


def read_admin_token(state_dir: str | os.PathLike[str]) -> str | None:
    """The token a server generated in ``state_dir``, or None (no file, or not ours to read)."""
    try:
        token = admin_token_path(state_dir).read_text().strip()
    except OSError:
        return None
    return token or None


def keep_private(path: Path) -> None:
    """Make a secret file of ours its owner's alone (0600) if others can read it;
    one of root's (a mounted secret, perhaps read-only) is left as it is.

    Raises:
        BadInput: It belongs to another user (not root), who chose it.
    """
    st = path.stat()
    if st.st_uid not in (os.geteuid(), 0):
        raise BadInput(
            f"{path} belongs to another user (uid {st.st_uid}), who chose the secret in it;"
            " remove it, or use a state folder of your own"
        )
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        try:
            path.chmod(0o600)
        except OSError as exc:  # a read-only mount (a root server's mounted secret)
            log.warning("%s is readable by others and cannot be made private: %s", path, exc)


def load_or_create_admin_token(state_dir: str | os.PathLike[str]) -> str:
    """The management token of a server started without one.

    The first start writes a random token to ``<state_dir>/admin_token``,
    readable by its owner only (0600); later starts reuse it, and the Python API
    and the CLI read it from there.  A file left readable by others is tightened.
    """
    path = admin_token_path(state_dir)
    token = read_admin_token(state_dir)
    if token is not None:
        keep_private(path)
        return token
    # Hex, not token_urlsafe: a url-safe token starts with '-' one time in 64,
    # and `clipper --admin-token -xyz` then reads as an unknown option.
    token = secrets.token_hex(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    try:
        # Another server starting on the same folder at once keeps the first token.
        os.link(tmp, path)
    except FileExistsError:
        token = read_admin_token(state_dir) or token
    finally:
        tmp.unlink()
    return token
