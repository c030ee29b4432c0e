"""The management port's guard: what runs on every request's headers before its
route (:func:`admin_guard`), so that a refused request's body is not read."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from clipper_core import dashboard
from clipper_core.auth import WWW_AUTHENTICATE, bearer_token, check_admin, secret_matches
from clipper_core.errors import Unauthorized
from clipper_core.http import Request, Response, error_response
from clipper_core.http.same_origin import SameOriginPolicy
from clipper_core.replica_tokens import ReplicaTokens

__all__ = ["BUNDLE_ROUTE", "REGISTER_ROUTE", "admin_guard", "may_register"]

#: Where replicas fetch their bundles; the route checks its own token.
BUNDLE_ROUTE = "/admin/bundle/"
#: Where replicas register; a version's registration token also opens it, which
#: the route checks against the body's model version (:func:`may_register`).
REGISTER_ROUTE = "/admin/register_replica"
#: The largest body a registration without the management token may declare:
#: registrations are a few hundred bytes, and a larger body is read before the
#: route can refuse it.
SCOPED_BODY_MAX = 4096


def admin_guard(
    token: str | None, policy: SameOriginPolicy
) -> Callable[[Request], Response | None]:
    """The management port's guard.

    First what a cross-site page could send is refused (see
    :mod:`clipper_core.http.same_origin`: foreign ``Host`` or ``Origin``, a body
    that is not JSON).  Then, when there is a token (always, unless the operator
    opted out), every request (every route, ping included) without
    ``Authorization: Bearer <token>`` gets a 401 JSON answer; the token is
    compared in constant time.  The bundle route checks a bundle token instead, and
    a small ``register_replica`` with another bearer token goes on to its route,
    which checks it as the registration token of the version it names."""

    def guard(request: Request) -> Response | None:
        refused = policy.refusal(request)
        if refused is not None:
            return refused
        if not token:
            return None
        if dashboard.is_public(request) or _is_bundle_fetch(request):
            # Let through before any token: they take no body, and one would be
            # read whole (up to the port's 1 GiB) by anybody who can connect.
            headers = request.headers
            if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
                return error_response(
                    413, "payload_too_large", f"{request.method} {request.path} takes no body"
                )
            return None
        try:
            check_admin(dashboard.auth_headers(request), token)
        except Unauthorized as exc:
            if _is_scoped_register(request):
                return None
            return error_response(401, exc.kind, str(exc), WWW_AUTHENTICATE)
        return None

    return guard


def may_register(
    headers: Mapping[str, str],
    admin_token: str | None,
    tokens: ReplicaTokens,
    model: str,
    version: str,
    replica_id: str,
) -> None:
    """Let ``register_replica`` of ``replica_id`` of ``model:version`` through, or raise.

    The management token registers anything; the version's registration token
    registers replicas of that version, except those the frontend starts itself
    (numbered ids), which it could otherwise move to an address of its own.

    Raises:
        Unauthorized: Neither token is presented, or the replica id is a number.
    """
    presented = bearer_token(headers)
    if not admin_token or secret_matches(presented, admin_token):
        return
    if not tokens.check_register(model, version, presented):
        raise Unauthorized(
            f"register_replica of {model}:{version} needs the management token or that"
            " version's registration token (get_replica_token's register_token)"
        )
    if replica_id.isdigit():
        raise Unauthorized(
            f"replica {replica_id} of {model}:{version} is one the frontend starts: a"
            " registration token registers other replica ids only"
        )


def _is_scoped_register(request: Request) -> bool:
    headers = request.headers
    length = headers.get("content-length", "")
    return (
        request.method == "POST"
        and request.path == REGISTER_ROUTE
        and bearer_token(headers) is not None
        and "transfer-encoding" not in headers
        and length.isdigit()
        and int(length) <= SCOPED_BODY_MAX
    )


def _is_bundle_fetch(request: Request) -> bool:
    return request.method == "GET" and request.path.startswith(BUNDLE_ROUTE)
