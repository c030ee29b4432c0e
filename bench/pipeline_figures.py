"""A pipeline run's figures, from the server's samples (``ClipperProcess.sample``)
and the client's latencies.  Pure: no server, no I/O.

Per stage over the measured window (the samples nearest its ends): how often it
ran per query, its mean time from send to answer (queueing included), its model
version's mean batch round trip (the dispatcher's: encode, the container's
transport and the model), the model's own call, the mean batch size; per edge,
the fraction taken.

What a hop costs the frontend, from a run at one client, where queries do not
overlap (each batch holds one query):

* ``hop_overhead_us``: (mean end-to-end latency - the batch round trips of the
  stages that ran) / the stages run per query.  The frontend's time, HTTP in and
  out included, spread over the hops;
* ``hop_overhead_with_transport_us``: the same, less only the models' own calls
  (the transport to the containers counted as overhead);
* ``marginal_hop_overhead_us``: against the single model at one client in the
  same run, what each stage beyond the first adds besides its round trip:
  ((pipeline - its round trips) - (single - its round trip)) / (hops - 1).
"""

from __future__ import annotations

from typing import Any

from bench.report import _at as at


def _get(sample: dict[str, Any] | None, *path: str) -> Any:
    v: Any = sample
    for key in path:
        if not isinstance(v, dict):
            return None
        v = v.get(key)
    return v


def _delta(a: dict[str, Any] | None, b: dict[str, Any] | None, *path: str) -> float | None:
    x, y = _get(a, *path), _get(b, *path)
    if x is None or y is None:
        return None
    return float(y) - float(x)


def _ratio(num: float | None, den: float | None, scale: float = 1.0, digits: int = 3) -> Any:
    if num is None or not den:
        return None
    return round(num / den * scale, digits)


def stage_figures(
    samples: list[dict[str, Any]], pipeline: str, t_from: float, t_to: float
) -> dict[str, Any]:
    """The pipeline's per-stage and per-edge figures over ``[t_from, t_to]``.

    Returns:
        ``queries`` (answered by the server in the window), ``server_latency_ms``
        (its mean, from parsing to reply), ``cpu_server_us_per_query``,
        ``stages`` (per stage: ``model``, ``runs_per_query``, ``stage_ms``,
        ``batch_ms``, ``model_ms``, ``mean_batch_size``, ``skipped``,
        ``deadline_misses``, ``errors``) and ``edges`` (per ``"from->to"``:
        ``when``, ``taken_fraction``).
    """
    a, b = at(samples, t_from), at(samples, t_to)
    app = ("apps", pipeline)
    queries = _delta(a, b, *app, "latency_count")
    out: dict[str, Any] = {
        "queries": None if queries is None else int(queries),
        "server_latency_ms": _ratio(_delta(a, b, *app, "latency_sum_s"), queries, 1000),
        "cpu_server_us_per_query": _ratio(_delta(a, b, "cpu_server_s"), queries, 1e6, 1),
    }
    stages: dict[str, Any] = {}
    for stage, row in (_get(b, "pipelines", pipeline, "stages") or {}).items():
        st = ("pipelines", pipeline, "stages", stage)
        key = f"{row.get('model')}:1"
        mdl = ("models", key)
        answered = _delta(a, b, *st, "answered")
        stages[stage] = {
            "model": key,
            "answered": None if answered is None else int(answered),
            "runs_per_query": _ratio(answered, queries, digits=4),
            "stage_ms": _ratio(
                _delta(a, b, *st, "latency_sum_s"), _delta(a, b, *st, "latency_count"), 1000
            ),
            "batch_ms": _ratio(
                _delta(a, b, *mdl, "batch_latency_sum_s"),
                _delta(a, b, *mdl, "batch_latency_count"),
                1000,
            ),
            "model_ms": _ratio(
                _delta(a, b, *mdl, "model_latency_sum_s"),
                _delta(a, b, *mdl, "model_latency_count"),
                1000,
            ),
            "mean_batch_size": _ratio(
                _delta(a, b, *mdl, "taken"), _delta(a, b, *mdl, "batches"), digits=2
            ),
            **{k: int(_delta(a, b, *st, k) or 0) for k in ("skipped", "deadline_misses", "errors")},
        }
    out["stages"] = stages
    edges: dict[str, Any] = {}
    for label, row in (_get(b, "pipelines", pipeline, "edges") or {}).items():
        ed = ("pipelines", pipeline, "edges", label)
        edges[label] = {
            "when": row.get("when"),
            "evaluated": int(_delta(a, b, *ed, "evaluated") or 0),
            "taken_fraction": _ratio(
                _delta(a, b, *ed, "taken"), _delta(a, b, *ed, "evaluated"), digits=4
            ),
        }
    out["edges"] = edges
    return out


def hop_overhead(
    figures: dict[str, Any], e2e_ms: float, single: tuple[float, float] | None = None
) -> dict[str, Any]:
    """What a hop costs the frontend (see the module's docstring).

    Args:
        figures: :func:`stage_figures` of a run at one client.
        e2e_ms: That run's mean end-to-end latency (client side), ms.
        single: The single model's (mean end-to-end latency, mean batch round
            trip), ms, at one client in the same run.

    Returns:
        ``hops`` (stages run per query), ``round_trips_ms`` and ``model_ms`` (their
        sums per query), ``hop_overhead_us``, ``hop_overhead_with_transport_us``
        and, with ``single``, ``marginal_hop_overhead_us``; None where a figure
        is missing.
    """
    hops = round_trips = models = 0.0
    complete = True
    for st in figures["stages"].values():
        runs = st.get("runs_per_query")
        if not runs:
            continue
        hops += runs
        if st.get("batch_ms") is None or st.get("model_ms") is None:
            complete = False
            continue
        round_trips += runs * st["batch_ms"]
        models += runs * st["model_ms"]
    out: dict[str, Any] = {
        "e2e_ms": round(e2e_ms, 4),
        "hops": round(hops, 4),
        "round_trips_ms": round(round_trips, 4) if complete else None,
        "model_ms": round(models, 4) if complete else None,
        "hop_overhead_us": None,
        "hop_overhead_with_transport_us": None,
        "marginal_hop_overhead_us": None,
    }
    if not complete or hops <= 0:
        return out
    out["hop_overhead_us"] = round((e2e_ms - round_trips) / hops * 1000, 1)
    out["hop_overhead_with_transport_us"] = round((e2e_ms - models) / hops * 1000, 1)
    if single is not None and hops > 1:
        single_e2e, single_rt = single
        extra = (e2e_ms - round_trips) - (single_e2e - single_rt)
        out["marginal_hop_overhead_us"] = round(extra / (hops - 1) * 1000, 1)
    return out


def format_stages(figures: dict[str, Any]) -> str:
    """The per-stage and per-edge figures as text lines."""
    lines = []
    for name, st in figures["stages"].items():
        lines.append(
            f"  stage {name:<10} runs/query {st['runs_per_query']}, stage {st['stage_ms']} ms,"
            f" batch round trip {st['batch_ms']} ms (model {st['model_ms']} ms),"
            f" mean batch {st['mean_batch_size']}"
        )
    for label, e in figures["edges"].items():
        if e["when"] is not None:
            lines.append(f"  edge  {label} when {e['when']}: taken {e['taken_fraction']}")
    return "\n".join(lines)
