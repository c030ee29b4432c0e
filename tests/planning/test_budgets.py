"""Batch latency budgets: the default rule (half the tightest linked SLO), and the
data plane applying the rule it is given whenever apps, links or versions change."""

from __future__ import annotations

import pytest

from clipper_core.dataplane import Application, DataPlane, Model, ModelVersion
from clipper_core.dataplane.model_version import UNLINKED_BATCH_SLO
from clipper_core.planning.budgets import BATCH_SLO_SHARE, batch_slos


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
