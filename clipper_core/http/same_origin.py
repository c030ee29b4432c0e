"""What the management port refuses because a browser could send it cross-site.

A web page the developer happens to open can make the browser send "simple"
requests to any address, loopback included, without a CORS preflight: a POST
whose body is ``text/plain``, ``application/x-www-form-urlencoded`` or
``multipart/form-data``.  With DNS rebinding (a name the attacker controls that
resolves to 127.0.0.1) the page can even read the answers.  The management API
deploys code, so it refuses:

* a ``Host`` header that does not name this server (the bound address, the
  loopback names when bound to loopback, or a name the operator configured):
  that is what DNS rebinding looks like;
* an ``Origin`` other than the management port's own origin, and a
  ``Sec-Fetch-Site`` other than ``same-origin``/``none`` on a state-changing
  method;
* a state-changing method (POST, PUT, ...) whose body is not ``application/json``:
  a browser cannot send that cross-site without a preflight, which we never
  answer with CORS permission.

Non-browser clients (``ClipperConnection``, Clipper's ``clipper_admin``, curl)
send JSON with their own ``Host`` and no ``Origin``, so they pass.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from clipper_core.http.messages import Request, Response, error_response

_SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
_LOOPBACK_NAMES = frozenset(("localhost", "127.0.0.1", "::1"))
_WILDCARDS = frozenset(("", "0.0.0.0", "::"))


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``"Example.com.:80"`` -> ``("example.com", 80)``; None when malformed."""
    value = value.strip().lower()
    if not value:
        return None
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:]
    else:
        name, _, port_text = value.partition(":")
        if ":" in port_text:
            return None
    port: int | None = None
    if port_text:
        if not port_text.isdigit():
            return None
        port = int(port_text)
    return name.rstrip("."), port


class SameOriginPolicy:
    """Decides whether a request to the management port could come from a
    cross-site page; :meth:`refusal` answers it.

    Args:
        bound_host: The address the port is bound to.
        port: Returns the port actually bound (it is known only once bound).
        scheme: ``"http"`` or ``"https"``.
        allowed_hosts: Further names clients may use (a reverse proxy's name, the
            machine's DNS name); ``ServerConfig.allowed_hosts``.
    """

    def __init__(
        self,
        bound_host: str,
        port: Callable[[], int],
        scheme: str,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        self._port = port
        self._scheme = scheme
        host = bound_host.strip().lower().strip("[]")
        self._any_ip = host in _WILDCARDS
        names = {h.strip().lower().rstrip(".") for h in allowed_hosts if h.strip()}
        ip = _ip(host)
        if self._any_ip or host == "localhost" or (ip is not None and ip.is_loopback):
            names |= _LOOPBACK_NAMES
        if not self._any_ip:
            names.add(host)
        self._names = frozenset(names)

    def host_allowed(self, name: str) -> bool:
        """Whether ``name`` (no port, lower case) names this server."""
        if name in self._names:
            return True
        # Bound to every address: any address literal reaches us, and a literal
        # cannot be rebound by DNS.
        return self._any_ip and _ip(name) is not None

    def allowed(self) -> list[str]:
        """The names accepted in ``Host``, for error messages."""
        return sorted(self._names) + (["any IP address"] if self._any_ip else [])

    def refusal(self, request: Request) -> Response | None:
        """The 4xx answer for a request a browser page could have forged, or None."""
        host = _split_host(request.headers.get("host", ""))
        if host is None or not self.host_allowed(host[0]):
            shown = request.headers.get("host", "")
            return error_response(
                403,
                "forbidden_host",
                f"Host {shown!r} does not name this server (allowed: "
                f"{', '.join(self.allowed())}); add a name with --allowed-host",
            )
        origin = request.headers.get("origin")
        if origin is not None and not self._same_origin(origin):
            return error_response(
                403,
                "cross_origin",
                f"requests from origin {origin!r} are refused: the management API"
                " answers only its own origin and non-browser clients",
            )
        if request.method in _SAFE_METHODS:
            return None
        site = request.headers.get("sec-fetch-site")
        if site is not None and site.strip().lower() not in ("same-origin", "none"):
            return error_response(
                403, "cross_origin", f"a {site} request to the management API is refused"
            )
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != "application/json":
            return error_response(
                415,
                "unsupported_media_type",
                f"management calls take an 'application/json' body, not"
                f" {media or 'a body without Content-Type'!r}",
            )
        return None

    def _same_origin(self, origin: str) -> bool:
        try:
            parts = urlsplit(origin.strip())
            port = parts.port
        except ValueError:
            return False
        if parts.scheme != self._scheme or not parts.hostname:
            return False
        default = 443 if parts.scheme == "https" else 80
        return self.host_allowed(parts.hostname.rstrip(".")) and (port or default) == self._port()


def cross_site_refusal(request: Request, what: str) -> Response | None:
    """The 403 answer for a state-changing query-port request (``what``: feedback)
    that the browser marks as sent by another site, or None.

    The query port answers any Host (clients reach it by many names) and takes
    bodies of any Content-Type (curl and urllib send a form type by default), so
    it goes by ``Sec-Fetch-Site``, which browsers set on every request a page
    makes (and programs do not): a page must not teach an app's selection policy
    on the developer's behalf."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return error_response(403, "cross_origin", f"a {site} {what} request is refused")
    return None
