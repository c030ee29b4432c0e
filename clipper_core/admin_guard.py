"""The management port's guard: what runs on every request's headers before its
route (:func:`admin_guard`), so that a refused request's body is not read."""

from __future__ import annotations

from collections.abc import Callable

from clipper_core import dashboard
from clipper_core.auth import WWW_AUTHENTICATE, check_admin
from clipper_core.errors import Unauthorized
from clipper_core.http import Request, Response, error_response
from clipper_core.http.same_origin import SameOriginPolicy

__all__ = ["BUNDLE_ROUTE", "admin_guard"]

#: Where replicas fetch their bundles; the route checks its own token.
BUNDLE_ROUTE = "/admin/bundle/"


def admin_guard(
    token: str | None, policy: SameOriginPolicy
) -> Callable[[Request], Response | None]:
    """The management port's guard.

    First what a cross-site page could send is refused (see
    :mod:`clipper_core.http.same_origin`: foreign ``Host`` or ``Origin``, a body
    that is not JSON).  Then, when there is a token (always, unless the operator
    opted out), every request (every route, ping included) without
    ``Authorization: Bearer <token>`` gets a 401 JSON answer; the token is
    compared in constant time.  The bundle route checks a replica token instead."""

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
            return error_response(401, exc.kind, str(exc), WWW_AUTHENTICATE)
        return None

    return guard


def _is_bundle_fetch(request: Request) -> bool:
    return request.method == "GET" and request.path.startswith(BUNDLE_ROUTE)
