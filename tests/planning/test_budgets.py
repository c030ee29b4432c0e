"""Batch latency budgets: the default rule (half the tightest linked SLO; a
pipeline's stages split their pipeline's half), and the data plane applying the
rule it is given whenever apps, links or versions change."""

from __future__ import annotations

from typing import Any

import pytest

from clipper_core.dataplane import Application, DataPlane, Model, ModelVersion
from clipper_core.dataplane.model_version import UNLINKED_BATCH_SLO
from clipper_core.pipelines import PipelineRouter, validate
from clipper_core.planning.budgets import (
    BATCH_SLO_SHARE,
    MIN_STAGE_BATCH_SLO,
    batch_slos,
    stage_budgets,
)
from clipper_core.store import PipelineRecord


def _mv(name: str, version: str) -> ModelVersion:
    return ModelVersion(name, version, "doubles", queue_capacity=10, max_batch_size=8)


def test_every_version_of_a_model_gets_a_share_of_its_tightest_app() -> None:
    apps = {
        "slow": Application("slow", "doubles", 0, 0.4, ["m", "n"]),
        "fast": Application("fast", "doubles", 0, 0.1, ["m"]),
    }
    models = {
        "m": Model("m", {"1": _mv("m", "1"), "2": _mv("m", "2")}),
        "n": Model("n", {"1": _mv("n", "1")}),
        "alone": Model("alone", {"1": _mv("alone", "1")}),
    }
    assert batch_slos(apps, models) == {
        ("m", "1"): pytest.approx(0.1 * BATCH_SLO_SHARE),
        ("m", "2"): pytest.approx(0.1 * BATCH_SLO_SHARE),
        ("n", "1"): pytest.approx(0.4 * BATCH_SLO_SHARE),
    }
    assert batch_slos({}, models) == {}


def test_the_data_plane_applies_the_rule_it_is_given() -> None:
    dp = DataPlane(cache_bytes=0, batch_slo_rule=batch_slos)
    mv = _mv("m", "1")
    dp.add_model_version(mv)
    assert mv.controller.slo == pytest.approx(UNLINKED_BATCH_SLO)
    dp.add_app(Application("a", "doubles", 0, 0.2))
    dp.link("a", "m")
    assert mv.controller.slo == pytest.approx(0.1)
    dp.add_app(Application("b", "doubles", 0, 0.05, ["m"]))
    assert mv.controller.slo == pytest.approx(0.025)
    later = _mv("m", "2")
    dp.add_model_version(later)  # a new version follows the same apps
    assert later.controller.slo == pytest.approx(0.025)
    dp.remove_app("b")
    assert mv.controller.slo == pytest.approx(0.1)
    dp.unlink("a", "m")
    assert mv.controller.slo == pytest.approx(UNLINKED_BATCH_SLO)


def test_without_a_rule_the_data_plane_decides_nothing() -> None:
    dp = DataPlane(cache_bytes=0)
    mv = _mv("m", "1")
    dp.add_model_version(mv)
    dp.add_app(Application("a", "doubles", 0, 0.2, ["m"]))
    assert mv.controller.slo == pytest.approx(UNLINKED_BATCH_SLO)
    dp.set_batch_slos({("m", "1"): 0.03})  # what its caller decides, it applies
    assert mv.controller.slo == pytest.approx(0.03)


# -- pipelines: the stages split the pipeline's share --------------------------------------


def _pipeline(
    name: str,
    stages: list[dict[str, Any]],
    edges: list[dict[str, Any]],
    slo: float,
    models: dict[str, str] | None = None,
) -> Application:
    """A pipeline app as the reconciler serves it: its router, its stage models linked."""
    types = models or {s["model"]: "doubles" for s in stages if s.get("model")}
    rec = PipelineRecord(name, "doubles", stages, edges, int(slo * 1e6), "-1")
    graph = validate(rec, {m: {"1": t, "2": t} for m, t in types.items()})
    app = Application(name, "doubles", -1, slo, list(graph.models), policy="pipeline")
    app.selector = PipelineRouter(graph)
    return app


def _budgets(app: Application, slo: float | None = None) -> dict[str, float]:
    """``stage_budgets`` of a pipeline app (at its own SLO unless given)."""
    assert isinstance(app.selector, PipelineRouter)
    return stage_budgets(app.selector.graph, app.slo if slo is None else slo)


def _stage(name: str, model: str | None = None, **more: Any) -> dict[str, Any]:
    return {"name": name, "model": model, "output_type": "doubles", **more}


SEQUENCE = (
    [_stage("a", "ma"), _stage("b", "mb"), _stage("c", "mc")],
    [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}],
)


def test_a_sequence_splits_the_share_equally() -> None:
    app = _pipeline("p", *SEQUENCE, slo=0.3)
    share = 0.3 * BATCH_SLO_SHARE
    assert _budgets(app) == {m: pytest.approx(share / 3) for m in ("a", "b", "c")}
    models = {m: Model(m, {"1": _mv(m, "1")}) for m in ("ma", "mb", "mc")}
    assert batch_slos({"p": app}, models) == {
        (m, "1"): pytest.approx(share / 3) for m in ("ma", "mb", "mc")
    }


def test_a_short_branch_gets_more_than_the_long_line() -> None:
    # a -> b -> c -> j and a -> s -> j, j a join without a model: the longest
    # path through a, b or c has 3 model stages, through s only 2 (a, s).
    stages = [
        _stage("a", "ma"),
        _stage("b", "mb"),
        _stage("c", "mc"),
        _stage("s", "ms"),
        _stage("j", None, combine="concat", output_type=None),
    ]
    edges = [
        {"from": "a", "to": "b"},
        {"from": "b", "to": "c"},
        {"from": "c", "to": "j"},
        {"from": "a", "to": "s"},
        {"from": "s", "to": "j"},
    ]
    share = 0.6 * BATCH_SLO_SHARE
    assert _budgets(_pipeline("p", stages, edges, slo=0.6)) == {
        **{m: pytest.approx(share / 3) for m in ("a", "b", "c")},
        "s": pytest.approx(share / 2),  # its path: a, s (the join runs no model)
    }


def test_many_stages_are_floored_but_never_above_the_share() -> None:
    stages = [_stage(f"s{i}", f"m{i}") for i in range(40)]
    edges = [{"from": f"s{i}", "to": f"s{i + 1}"} for i in range(39)]
    app = _pipeline("p", stages, edges, slo=0.02)
    budgets = _budgets(app)
    assert len(budgets) == 40
    assert all(b == pytest.approx(MIN_STAGE_BATCH_SLO) for b in budgets.values())
    tiny = _budgets(app, 0.0005)  # a share below the floor
    assert all(b == pytest.approx(0.0005 * BATCH_SLO_SHARE) for b in tiny.values())


def test_a_model_shared_by_an_app_and_a_pipeline_follows_the_tightest() -> None:
    pipeline = _pipeline("p", *SEQUENCE, slo=0.3)  # each stage: 0.05
    loose = Application("loose", "doubles", 0, 1.0, ["ma"])  # 0.5
    tight = Application("tight", "doubles", 0, 0.04, ["mc"])  # 0.02
    models = {m: Model(m, {"1": _mv(m, "1")}) for m in ("ma", "mb", "mc")}
    apps = {"p": pipeline, "loose": loose, "tight": tight}
    assert batch_slos(apps, models) == {
        ("ma", "1"): pytest.approx(0.05),
        ("mb", "1"): pytest.approx(0.05),
        ("mc", "1"): pytest.approx(0.02),
    }


def test_a_pinned_stage_binds_its_version_alone() -> None:
    stages = [_stage("a", "ma"), _stage("b", "mb", version="2")]
    app = _pipeline("p", stages, [{"from": "a", "to": "b"}], slo=0.2)
    models = {m: Model(m, {"1": _mv(m, "1"), "2": _mv(m, "2")}) for m in ("ma", "mb")}
    assert batch_slos({"p": app}, models) == {
        ("ma", "1"): pytest.approx(0.05),
        ("ma", "2"): pytest.approx(0.05),
        ("mb", "2"): pytest.approx(0.05),
    }


def test_the_data_plane_gives_each_stage_its_share_of_the_pipeline() -> None:
    dp = DataPlane(cache_bytes=0, batch_slo_rule=batch_slos)
    for m in ("ma", "mb", "mc"):
        dp.add_model_version(_mv(m, "1"))
    app = _pipeline("p", *SEQUENCE, slo=0.3)
    linked, app.linked_models = app.linked_models, []
    dp.add_app(app)
    for m in linked:  # what the reconciler does
        dp.link("p", m)
    for m in ("ma", "mb", "mc"):
        assert dp.get_model_version(m, "1").controller.slo == pytest.approx(0.05)
    dp.add_app(Application("fast", "doubles", 0, 0.02, ["mb"]))
    assert dp.get_model_version("mb", "1").controller.slo == pytest.approx(0.01)
    assert dp.get_model_version("ma", "1").controller.slo == pytest.approx(0.05)
    dp.remove_app("p")
    assert dp.get_model_version("ma", "1").controller.slo == pytest.approx(UNLINKED_BATCH_SLO)
