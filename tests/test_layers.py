"""The shape of the code base, read from its source (no import runs).

An ``ast`` pass over ``clipper_core/`` and ``model_containers/`` builds the import
graph, counting the imports under ``if TYPE_CHECKING:`` and those inside
functions: a type-only edge couples two modules as much as a runtime one.  On it:

* no import cycle (a package's ``__init__`` is a module of its own);
* the layer order of the control-plane design (its §5.1): a module imports only
  from its own layer or below; the client side only from the leaves;
* no module over 500 lines.

Edges that still break a rule, each with what removes it, are listed in
:data:`PENDING_EDGES`; an entry whose edge is gone fails, so the list only shrinks.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("clipper_core", "model_containers")

#: Longest module a file may be.
MAX_LINES = 500

# -- the layers (design §5.1) ----------------------------------------------------------

LEAVES, STATE, DATA_PLANE, ROUTERS, CONTROL, FRONTENDS, ROOTS_LAYER = range(7)
#: The client library: a layer apart, beside the server's; it may use the leaves.
CLIENT = -1

#: Module (or package, for everything in it) -> layer.  The most specific entry
#: wins; ``clipper_core`` names only the package's ``__init__`` (:data:`EXACT`).
LAYERS: dict[str, int] = {
    # L0 leaves
    "clipper_core._version": LEAVES,
    "clipper_core.errors": LEAVES,
    "clipper_core.logs": LEAVES,
    "clipper_core.metrics": LEAVES,
    "clipper_core.structures": LEAVES,
    "clipper_core._pure": LEAVES,
    "clipper_core._proto": LEAVES,
    "clipper_core.admission": LEAVES,
    "clipper_core.service_time": LEAVES,
    "clipper_core.auth": LEAVES,
    "clipper_core.clipper_api": LEAVES,
    "clipper_core.clipper_reply": LEAVES,
    "clipper_core.output_json": LEAVES,
    "clipper_core.http": LEAVES,
    "clipper_core.config": LEAVES,
    "clipper_core.tls": LEAVES,
    "clipper_core.model_bundle": LEAVES,
    "clipper_core.state_dir": LEAVES,
    "clipper_core.requirements": LEAVES,
    "clipper_core.replica_tokens": LEAVES,
    # The container runtime and its wire format, which the data plane speaks.
    "model_containers": LEAVES,
    # L1 state & managers
    "clipper_core.store": STATE,
    "clipper_core.managers": STATE,
    # L2 data plane
    "clipper_core.dataplane": DATA_PLANE,
    "clipper_core.replica_client": DATA_PLANE,
    "clipper_core.replica_codec": DATA_PLANE,
    "clipper_core.replica_metadata": DATA_PLANE,
    "clipper_core.local_channel": DATA_PLANE,
    "clipper_core.gc_freeze": LEAVES,
    "clipper_core.replica_tls": DATA_PLANE,
    # L3 routers
    "clipper_core.selection": ROUTERS,
    "clipper_core.pipelines": ROUTERS,
    # L4 control
    "clipper_core.control": CONTROL,
    "clipper_core.planning": CONTROL,
    # L5 frontends
    "clipper_core.query_api": FRONTENDS,
    "clipper_core.query_refusal": FRONTENDS,
    "clipper_core.selection.api": FRONTENDS,
    "clipper_core.oip": FRONTENDS,
    "clipper_core.admin_api": FRONTENDS,
    "clipper_core.admin_guard": FRONTENDS,
    "clipper_core.admin_requests": FRONTENDS,
    "clipper_core.dashboard": FRONTENDS,
    "clipper_core.server_metrics": FRONTENDS,
    "clipper_core.metrics_export": FRONTENDS,
    "clipper_core.openapi": FRONTENDS,
    # L6 composition roots
    "clipper_core.server": ROOTS_LAYER,
    "clipper_core.embedded": ROOTS_LAYER,
    "clipper_core.listeners": ROOTS_LAYER,
    "clipper_core.frontend_workers": ROOTS_LAYER,
    "clipper_core.query_worker": ROOTS_LAYER,
    "clipper_core.cli": ROOTS_LAYER,
    "clipper_core.cli_serve": ROOTS_LAYER,
    "clipper_core.cli_pipelines": ROOTS_LAYER,
    "clipper_core.demo": ROOTS_LAYER,
    # client side
    "clipper_core": CLIENT,
    "clipper_core.connection": CLIENT,
    "clipper_core.connection_local": CLIENT,
    "clipper_core.connection_models": CLIENT,
    "clipper_core.connection_apply": CLIENT,
    "clipper_core.connection_pipelines": CLIENT,
    "clipper_core.runtime_env": CLIENT,
    "clipper_core.deployers": CLIENT,
}

#: Entries of :data:`LAYERS` that name one module, not the modules under it.
EXACT = frozenset({"clipper_core"})

#: Edges that break a rule today, and what removes them.  Each is left out of the
#: cycle check and the layer check, and must still exist.
PENDING_EDGES: dict[tuple[str, str], str] = {}


# -- the graph -------------------------------------------------------------------------


@cache
def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the roots: dotted name -> (file, whether a package)."""
    found: dict[str, tuple[Path, bool]] = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            found[".".join(parts)] = (path, is_package)
    return found


def _nearest_module(name: str, known: dict[str, tuple[Path, bool]]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


@cache
def graph() -> dict[str, frozenset[str]]:
    """Module -> the modules of the roots it imports, at any place in the file."""
    known = modules()
    edges: dict[str, frozenset[str]] = {}
    for name, (path, is_package) in known.items():
        package = name if is_package else name.rpartition(".")[0]
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = _nearest_module(alias.name, known)
                    if target:
                        out.add(target)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join([*parts, base] if base else parts)
                for alias in node.names:
                    # ``from pkg import mod`` imports the module pkg.mod.
                    submodule = f"{base}.{alias.name}"
                    target = submodule if submodule in known else _nearest_module(base, known)
                    if target:
                        out.add(target)
        out.discard(name)
        edges[name] = frozenset(out)
    return edges


def checked_edges() -> dict[str, set[str]]:
    """The graph without :data:`PENDING_EDGES`."""
    return {
        src: {dst for dst in dsts if (src, dst) not in PENDING_EDGES}
        for src, dsts in graph().items()
    }


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return components


def layer_of(name: str) -> int | None:
    """The layer of a module: its own entry, else its nearest package's."""
    candidate = name
    while candidate:
        if candidate in LAYERS and (candidate == name or candidate not in EXACT):
            return LAYERS[candidate]
        candidate = candidate.rpartition(".")[0]
    return None


def may_import(src: int, dst: int) -> bool:
    if src == ROOTS_LAYER:
        return True
    if src == CLIENT:
        return dst in (CLIENT, LEAVES)
    if dst == CLIENT:
        return False
    return dst <= src


# -- the tests -------------------------------------------------------------------------


def test_the_graph_sees_type_only_and_lazy_imports() -> None:
    edges = graph()
    # Under ``if TYPE_CHECKING:``.
    assert "clipper_core.managers.base" in edges["clipper_core.server_metrics"]
    # Inside a function.
    assert "clipper_core.deployers.requirements" in edges["clipper_core.connection_models"]
    # ``from pkg import module`` and a package's __init__ as a module of its own.
    assert "clipper_core.dashboard" in edges["clipper_core.server"]
    assert "clipper_core.dataplane.routing" in edges["clipper_core.dataplane"]
    # A cycle made of such edges is found.
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        ["a", "b", "c"],
        ["d"],
    ]


def test_no_import_cycle() -> None:
    cycles = [c for c in strongly_connected(checked_edges()) if len(c) > 1]
    assert not cycles, f"import cycles (type-only and lazy imports count): {cycles}"


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in modules() if layer_of(m) is None)
    assert not missing, f"add these modules to LAYERS in {__file__}: {missing}"


def test_modules_import_only_from_their_layer_or_below() -> None:
    wrong = []
    for src, dsts in checked_edges().items():
        src_layer = layer_of(src)
        for dst in sorted(dsts):
            dst_layer = layer_of(dst)
            if src_layer is None or dst_layer is None:
                continue  # test_every_module_has_a_layer says so
            if not may_import(src_layer, dst_layer):
                wrong.append(f"{src} (layer {src_layer}) -> {dst} (layer {dst_layer})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_frontend_knows_the_server() -> None:
    # Spelled out: what the layer order implies for the composition root.
    server = "clipper_core.server"
    importers = sorted(
        src
        for src, dsts in checked_edges().items()
        if server in dsts and layer_of(src) != ROOTS_LAYER
    )
    assert not importers, f"only composition roots may import {server}: {importers}"


def test_pending_edges_still_exist() -> None:
    edges = graph()
    gone = sorted(f"{src} -> {dst}" for src, dst in PENDING_EDGES if dst not in edges[src])
    assert not gone, f"these edges are gone: remove them from PENDING_EDGES: {gone}"


def test_no_module_over_500_lines() -> None:
    long = {}
    for path, _ in modules().values():
        with open(path, "rb") as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            long[str(path.relative_to(REPO))] = n
    assert not long, f"modules over {MAX_LINES} lines: {dict(sorted(long.items()))}"
