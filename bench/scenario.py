"""Scenarios: small TOML files naming a model, an app and a default load.

``load_scenario("noop")`` reads ``bench/scenarios/noop.toml``; a path to any other
``.toml`` works too.  Command-line options override the ``[load]`` and
``[model]`` tables (see ``bench.__main__``); ``--smoke`` replaces the load with
the ``[smoke]`` table's small figures.

A scenario with a ``[pipeline]`` table (``[[pipeline.stages]]``,
``[[pipeline.edges]]``) serves those stages as a pipeline and runs it next to
the ``[model]`` table's single model (see ``bench.pipeline``); its input is the
``[model]``'s (type and length).
"""

from __future__ import annotations

import copy
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"

MODEL_KINDS = ("noop", "matmul", "sleep")
#: What a pipeline stage may run: the scenario models, and the pipeline's own
#: (``bench.models``: preprocess standardizes, argmax answers one int, lookup
#: maps an int to a label).
STAGE_KINDS = (*MODEL_KINDS, "preprocess", "argmax", "lookup")
PREDICATE_OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in")
PROTOCOLS = ("rest", "oip-json", "oip-binary", "oip-grpc")
MODES = ("closed", "open", "burst")
DISTRIBUTIONS = ("uniform", "zipf")


def batch_slo_share() -> float:
    """Share of the app SLO that the server gives one batch
    (``clipper_core.planning.budgets.BATCH_SLO_SHARE``), so that the
    formula follows the server; 0.5 when it cannot be read."""
    try:
        from clipper_core.planning.budgets import BATCH_SLO_SHARE
    except ImportError:  # pragma: no cover - the bench runs next to clipper_core
        return 0.5
    return float(BATCH_SLO_SHARE)


class ScenarioError(ValueError):
    """A scenario file or an override is invalid."""


@dataclass
class ModelSpec:
    kind: str = "noop"
    input_type: str = "floats"
    dim: int = 8
    seed: int = 0
    output: str = "full"  # matmul: "full" row or "argmax"
    a_ms: float = 1.0  # sleep: per-item cost
    b_ms: float = 5.0  # sleep: per-batch cost
    batch_size: int = -1
    batch_wait_micros: int = 0
    controller: str | None = None  # "aimd" | "quantile" | "fixed"; None: from batch_size
    cache_enabled: bool = False
    num_replicas: int = 1
    formula_check: bool = False  # sleep: report the settled batch size vs the formula


@dataclass
class ServerSpec:
    admission: bool = True  # False: `serve --no-admission` (where the server has it)
    args: list[str] = field(default_factory=list)  # more `clipper serve` options
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class AppSpec:
    slo_ms: float = 1000.0
    default_output: str = "-1"


@dataclass
class InputSpec:
    distinct: int = 64
    distribution: str = "uniform"
    zipf_s: float = 1.1
    seed: int = 0


@dataclass
class LoadSpec:
    protocol: str = "rest"
    mode: str = "closed"
    concurrency: int = 32
    concurrency_factor: float = 0.0  # sleep: concurrency = ceil(factor * optimum)
    rate: float = 1000.0
    burst_size: int = 32
    duration_s: float = 10.0
    warmup_s: float = 2.0
    max_requests: int = 0  # 0: bounded by time only
    timeout_s: float = 10.0
    workers: int = 1
    max_connections: int = 1024
    grpc_channels: int = 0  # 0: min(concurrency, 4)
    grpc_client: str = "aio"  # "aio": grpc.aio channels; "h2": bench.load.grpc_h2 (closed loop)
    seed: int = 12345
    oip_shape: list[int] = field(default_factory=lambda: [1, -1])  # -1: the input's length


@dataclass
class RampSpec:
    start: float = 250.0
    factor: float = 1.5
    max_rate: float = 50_000.0
    refine: int = 3
    step_duration_s: float = 5.0
    step_warmup_s: float = 1.0
    attainment: float = 0.99
    rates: list[float] = field(default_factory=list)  # explicit list instead of auto
    # --sweep: a failed step while other programs took more cores than this is
    # measured once more (bench.sweep._SweepRun.step); None: every step counts.
    max_foreign_cpu: float | None = None


@dataclass
class SweepSpec:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    batch_wait_micros: list[int] = field(default_factory=lambda: [0, 500, 1000, 2000])
    adaptive: bool = True
    # The adaptive controller modes run at each wait, against the same static grid.
    controllers: list[str] = field(default_factory=lambda: ["aimd", "quantile"])
    # Ramps per configuration, one round after another (each round interleaves
    # every configuration); a configuration's rate is the median of its rounds.
    rounds: int = 1


@dataclass
class StageSpec:
    """One ``[[pipeline.stages]]`` entry: a stage and the model deployed for it
    (named ``<pipeline>-<stage>``)."""

    name: str = ""
    kind: str = "noop"
    input_type: str = ""  # "": the pipeline's ([model].input_type)
    output_type: str | None = None  # what the stage answers (feeds the next model)
    dim: int = 0  # 0: [model].dim
    seed: int = 0
    output: str = "full"  # matmul: "full" row or "argmax"
    a_ms: float = 1.0
    b_ms: float = 5.0
    batch_size: int = -1
    batch_wait_micros: int = 0
    num_replicas: int = 1


@dataclass
class PipelineSpec:
    """The ``[pipeline]`` table: stages, edges (``{from, to, when}``, as
    ``register_pipeline`` takes them), and how the run is split."""

    stages: list[StageSpec] = field(default_factory=list)
    edges: list[dict[str, Any]] = field(default_factory=list)
    latency_concurrency: int = 1  # the per-hop overhead is measured at this load
    rounds: int = 1  # throughput: pipeline and single model alternated N times


@dataclass
class Scenario:
    name: str
    description: str = ""
    model: ModelSpec = field(default_factory=ModelSpec)
    server: ServerSpec = field(default_factory=ServerSpec)
    app: AppSpec = field(default_factory=AppSpec)
    inputs: InputSpec = field(default_factory=InputSpec)
    load: LoadSpec = field(default_factory=LoadSpec)
    ramp: RampSpec = field(default_factory=RampSpec)
    sweep: SweepSpec = field(default_factory=SweepSpec)
    pipeline: PipelineSpec | None = None
    smoke: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""

    @property
    def slo_s(self) -> float:
        return self.app.slo_ms / 1000.0

    def optimum_batch_size(self, max_batch_size: int = 256) -> int | None:
        """For a ``sleep`` model, the largest n with a*n + b within the batch objective."""
        if self.model.kind != "sleep" or self.model.a_ms <= 0 or not self.model.formula_check:
            return None
        batch_slo_ms = self.app.slo_ms * batch_slo_share()
        n = math.floor((batch_slo_ms - self.model.b_ms) / self.model.a_ms)
        return max(1, min(n, max_batch_size))

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    def copy(self) -> Scenario:
        return copy.deepcopy(self)


def available(*, pipelines: bool | None = None) -> list[str]:
    """The scenario names; ``pipelines`` True or False keeps only the pipeline
    scenarios or only the others."""
    names = sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))
    if pipelines is None:
        return names
    return [n for n in names if (load_scenario(n).pipeline is not None) == pipelines]


def _fill(obj: Any, table: dict[str, Any], where: str) -> None:
    for key, value in table.items():
        if not hasattr(obj, key):
            raise ScenarioError(f"{where}: unknown key {key!r}")
        current = getattr(obj, key)
        if isinstance(current, bool):
            if not isinstance(value, bool):
                raise ScenarioError(f"{where}.{key}: expected true/false, got {value!r}")
        elif isinstance(current, float) and isinstance(value, int):
            value = float(value)
        elif isinstance(current, list):
            if not isinstance(value, list):
                raise ScenarioError(f"{where}.{key}: expected a list, got {value!r}")
        elif isinstance(current, dict):
            if not isinstance(value, dict):
                raise ScenarioError(f"{where}.{key}: expected a table, got {value!r}")
            value = {str(k): str(v) for k, v in value.items()}
        elif current is not None and not isinstance(value, type(current)):
            raise ScenarioError(f"{where}.{key}: expected {type(current).__name__}, got {value!r}")
        setattr(obj, key, value)


def load_scenario(name_or_path: str) -> Scenario:
    """Read a scenario by name (``bench/scenarios/NAME.toml``) or path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = SCENARIO_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise ScenarioError(
            f"no scenario {name_or_path!r}: expected one of {', '.join(available())}"
            " or a path to a .toml file"
        )
    with path.open("rb") as f:
        data = tomllib.load(f)
    sc = Scenario(name=str(data.pop("name", path.stem)), source=str(path))
    sc.description = str(data.pop("description", ""))
    tables: dict[str, Any] = {
        "model": sc.model,
        "server": sc.server,
        "app": sc.app,
        "inputs": sc.inputs,
        "load": sc.load,
        "ramp": sc.ramp,
        "sweep": sc.sweep,
    }
    for key, value in data.items():
        if key == "smoke":
            sc.smoke = dict(value)
        elif key == "pipeline":
            sc.pipeline = _pipeline(value, path.name)
        elif key == "targets":
            sc.targets = [_check_target(t, path.name) for t in value]
        elif key in tables:
            _fill(tables[key], value, f"{path.name}: [{key}]")
        else:
            raise ScenarioError(f"{path.name}: unknown table or key {key!r}")
    validate(sc)
    return sc


def _pipeline(table: Any, where: str) -> PipelineSpec:
    if not isinstance(table, dict):
        raise ScenarioError(f"{where}: [pipeline] must be a table")
    table = dict(table)
    spec = PipelineSpec()
    for i, raw in enumerate(table.pop("stages", [])):
        stage = StageSpec()
        _fill(stage, raw, f"{where}: [[pipeline.stages]] #{i + 1}")
        spec.stages.append(stage)
    for i, raw in enumerate(table.pop("edges", [])):
        unknown = set(raw) - {"from", "to", "when"}
        if unknown or not {"from", "to"} <= set(raw):
            raise ScenarioError(
                f"{where}: [[pipeline.edges]] #{i + 1} takes from, to and when (got {sorted(raw)})"
            )
        spec.edges.append(dict(raw))
    _fill(spec, table, f"{where}: [pipeline]")
    return spec


def _check_pipeline(p: PipelineSpec) -> None:
    names = [s.name for s in p.stages]
    if not names:
        raise ScenarioError("pipeline: at least one [[pipeline.stages]]")
    if "" in names or len(set(names)) != len(names):
        raise ScenarioError(f"pipeline: each stage needs a name of its own, got {names}")
    for st in p.stages:
        if st.kind not in STAGE_KINDS:
            raise ScenarioError(f"pipeline stage {st.name}: kind must be one of {STAGE_KINDS}")
        if st.input_type not in ("", "floats", "doubles", "ints"):
            raise ScenarioError(f"pipeline stage {st.name}: input_type {st.input_type!r}")
    for e in p.edges:
        for end in (e["from"], e["to"]):
            if end not in names:
                raise ScenarioError(f"pipeline edge {e['from']}->{e['to']}: no stage {end!r}")
        when = e.get("when")
        if when is not None and (not isinstance(when, dict) or when.get("op") not in PREDICATE_OPS):
            raise ScenarioError(
                f"pipeline edge {e['from']}->{e['to']}: when = {{op, value, field}} with op"
                f" one of {PREDICATE_OPS}"
            )
    if p.latency_concurrency < 1 or p.rounds < 1:
        raise ScenarioError("pipeline: latency_concurrency and rounds must be >= 1")


#: The batch-size controller modes a model may run (``ModelRecord.controller``).
CONTROLLERS = ("aimd", "quantile", "fixed")

#: What a ``[[targets]]`` entry may bound (see ``bench.targets``).

TARGET_KEYS = {
    "throughput_rps_min",
    "fraction_of_bare_min",
    "p50_ms_max",
    "p99_ms_max",
    "best_rate_min",
    "adaptive_over_best_static_min",
    "every_adaptive_over_best_static_min",
    "controller_ratio_tolerance",
    "hop_overhead_us_max",
    "fraction_of_single_min",
}
TARGET_WHEN = {"kind", "protocol", "mode", "concurrency"}


def _check_target(t: Any, where: str) -> dict[str, Any]:
    if not isinstance(t, dict) or "name" not in t:
        raise ScenarioError(f"{where}: each [[targets]] needs a name")
    for k in t:
        if k not in TARGET_KEYS | {"name", "when"}:
            raise ScenarioError(f"{where}: target {t['name']!r}: unknown key {k!r}")
    for k in t.get("when", {}):
        if k not in TARGET_WHEN:
            raise ScenarioError(f"{where}: target {t['name']!r}: unknown condition {k!r}")
    return dict(t)


def validate(sc: Scenario) -> None:
    m, ld = sc.model, sc.load
    if m.kind not in MODEL_KINDS:
        raise ScenarioError(f"model.kind must be one of {MODEL_KINDS}, got {m.kind!r}")
    if m.input_type not in ("floats", "doubles", "ints"):
        raise ScenarioError(f"model.input_type must be floats, doubles or ints, got {m.input_type}")
    if m.dim < 1:
        raise ScenarioError("model.dim must be >= 1")
    if m.kind == "matmul" and m.output not in ("full", "argmax"):
        raise ScenarioError("model.output must be 'full' or 'argmax'")
    if ld.protocol not in PROTOCOLS:
        raise ScenarioError(f"load.protocol must be one of {PROTOCOLS}, got {ld.protocol!r}")
    if ld.mode not in MODES:
        raise ScenarioError(f"load.mode must be one of {MODES}, got {ld.mode!r}")
    if sc.inputs.distribution not in DISTRIBUTIONS:
        raise ScenarioError(f"inputs.distribution must be one of {DISTRIBUTIONS}")
    if sc.inputs.distinct < 1:
        raise ScenarioError("inputs.distinct must be >= 1")
    if ld.concurrency < 1 or ld.rate <= 0 or ld.burst_size < 1 or ld.workers < 1:
        raise ScenarioError("load: concurrency, rate, burst_size and workers must be positive")
    if ld.duration_s <= 0 and ld.max_requests <= 0:
        raise ScenarioError("load: bound the run by duration_s or max_requests")
    if sc.app.slo_ms <= 0:
        raise ScenarioError("app.slo_ms must be > 0")
    if m.controller not in (None, *CONTROLLERS):
        raise ScenarioError(f"model.controller must be one of {CONTROLLERS}, got {m.controller!r}")
    if m.controller == "fixed" and m.batch_size <= 0:
        raise ScenarioError("model.controller 'fixed' needs model.batch_size > 0")
    bad = [c for c in sc.sweep.controllers if c not in ("aimd", "quantile")]
    if bad:
        raise ScenarioError(f"sweep.controllers: adaptive modes only (aimd, quantile), got {bad}")
    if sc.sweep.rounds < 1:
        raise ScenarioError(f"sweep.rounds must be >= 1, got {sc.sweep.rounds}")
    if sc.pipeline is not None:
        _check_pipeline(sc.pipeline)


def apply_smoke(sc: Scenario) -> None:
    """Shrink the load to the ``[smoke]`` table: seconds, small counts."""
    s = sc.smoke
    ld = sc.load
    ld.duration_s = float(s.get("duration_s", 1.5))
    ld.warmup_s = float(s.get("warmup_s", 0.3))
    if "concurrency" in s:
        ld.concurrency = int(s["concurrency"])
    if "rate" in s:
        ld.rate = float(s["rate"])
    ld.max_requests = int(s.get("max_requests", 0))
    # A loaded CI machine must not turn a smoke run into SLO misses or 503s from
    # admission control: the smoke checks the harness, not the server's speed.
    if "slo_ms" in s:
        sc.app.slo_ms = float(s["slo_ms"])
    ld.workers = 1
    sc.ramp.rates = [float(r) for r in s.get("ramp_rates", [50, 100])]
    sc.ramp.step_duration_s = float(s.get("step_duration_s", 1.0))
    sc.ramp.step_warmup_s = float(s.get("step_warmup_s", 0.2))
    sc.ramp.refine = 0
    sc.sweep.batch_sizes = [int(b) for b in s.get("sweep_batch_sizes", [4])]
    sc.sweep.batch_wait_micros = [int(w) for w in s.get("sweep_batch_wait_micros", [500])]
    sc.sweep.rounds = 1
    if sc.pipeline is not None:
        sc.pipeline.rounds = 1
