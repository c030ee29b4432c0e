"""Path routing: literal paths and ``{name}`` segments, literal segments first."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from clipper_core.http.messages import Request, Response, error_response

#: A request handler.  ``async def`` is the norm; a plain function that returns a
#: ``Response`` is answered inline, without a task.
Handler = Callable[[Request, dict[str, str]], Awaitable[Response] | Response]

_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
)


class _Node:
    """One path segment of the routing tree."""

    __slots__ = ("literal", "methods", "param")

    def __init__(self) -> None:
        self.literal: dict[str, _Node] = {}
        self.param: _Node | None = None
        # method -> (handler, names of the path's parameters in order, route path)
        self.methods: dict[str, tuple[Handler, tuple[str, ...], str]] = {}


def _segments(path: str) -> list[str]:
    return path[1:].split("/")


_MATCH_CACHE_SIZE = 1024


class Router:
    """Maps (method, path) to a handler.

    Paths are literal (``"/admin/ping"``) or hold whole-segment parameters
    (``"/{app}/predict"``, ``"/v2/models/{model}/versions/{version}/infer"``).  When
    several routes match a path, literal segments win over parameters, segment by
    segment from the left, so ``"/admin/{op}"`` beats ``"/{app}/predict"`` for
    ``/admin/predict``.  A parameter matches one non-empty segment.  ``HEAD`` falls
    back to the ``GET`` handler.
    """

    def __init__(self) -> None:
        self._root = _Node()
        # Fast path for the literal routes: path -> method -> handler.
        self._static: dict[str, dict[str, Handler]] = {}
        # Matches of parameter routes, (method, path) -> (handler, params): most
        # traffic hits a few paths (/<app>/predict).  Bounded, since paths come from
        # clients; emptied when full and on add().
        self._matched: dict[tuple[str, str], tuple[Handler, dict[str, str]]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        """Register ``handler`` for ``method`` requests to ``path``.

        Raises:
            ValueError: The method or path is malformed, or the route exists already.
        """
        method = method.upper()
        if method not in _METHODS:
            raise ValueError(f"unknown HTTP method {method!r}")
        self._matched.clear()
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/': {path!r}")
        names: list[str] = []
        node = self._root
        for seg in _segments(path):
            if seg.startswith("{") and seg.endswith("}"):
                name = seg[1:-1]
                if not name.isidentifier():
                    raise ValueError(f"bad parameter name {name!r} in route {path!r}")
                if name in names:
                    raise ValueError(f"parameter {name!r} repeated in route {path!r}")
                names.append(name)
                if node.param is None:
                    node.param = _Node()
                node = node.param
            else:
                if "{" in seg or "}" in seg:
                    raise ValueError(
                        f"a parameter must be a whole path segment: {seg!r} in {path!r}"
                    )
                nxt = node.literal.get(seg)
                if nxt is None:
                    nxt = node.literal[seg] = _Node()
                node = nxt
        if method in node.methods:
            raise ValueError(f"route {method} {path} is already registered")
        node.methods[method] = (handler, tuple(names), path)
        if not names:
            self._static.setdefault(path, {})[method] = handler

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | Response:
        """The handler and path parameters for a request, or a 404/405 response."""
        static = self._static.get(path)
        if static is not None:
            handler = static.get(method)
            if handler is not None:
                return handler, {}
        matched = self._matched.get((method, path))
        if matched is not None:
            return matched[0], dict(matched[1])  # a handler may keep or change its dict
        allow: set[str] = set()
        found = _search(self._root, _segments(path), 0, [], method, allow)
        if found is not None:
            if len(self._matched) >= _MATCH_CACHE_SIZE:
                self._matched.clear()
            self._matched[method, path] = (found[0], dict(found[1]))
            return found
        if not allow:
            return error_response(404, "not_found", f"no route for {method} {path}")
        if "GET" in allow:
            allow.add("HEAD")
        allowed = ", ".join(sorted(allow))
        return error_response(
            405,
            "method_not_allowed",
            f"method {method} is not allowed for {path} (allowed: {allowed})",
            {"Allow": allowed},
        )

    def routes(self) -> list[tuple[str, str]]:
        """The registered (method, path) pairs, literal segments first."""
        out: list[tuple[str, str]] = []
        stack = [self._root]
        while stack:
            node = stack.pop()
            out.extend((m, route[2]) for m, route in node.methods.items())
            if node.param is not None:
                stack.append(node.param)
            stack.extend(reversed(node.literal.values()))
        return out


def _search(
    node: _Node,
    segs: list[str],
    i: int,
    values: list[str],
    method: str,
    allow: set[str],
) -> tuple[Handler, dict[str, str]] | None:
    """Depth-first match, literal child before the parameter child.

    Collects the methods of every matching route into ``allow`` so that a 405 can
    name them when no route takes ``method``.
    """
    if i == len(segs):
        methods = node.methods
        if not methods:
            return None
        entry = methods.get(method)
        if entry is None and method == "HEAD":
            entry = methods.get("GET")
        if entry is not None:
            return entry[0], dict(zip(entry[1], values, strict=True))
        allow.update(methods)
        return None
    seg = segs[i]
    child = node.literal.get(seg)
    if child is not None:
        found = _search(child, segs, i + 1, values, method, allow)
        if found is not None:
            return found
    if node.param is not None and seg:
        values.append(seg)
        found = _search(node.param, segs, i + 1, values, method, allow)
        if found is not None:
            return found
        values.pop()
    return None
