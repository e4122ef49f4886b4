"""Accuracy under a deployment budget: what a sweep optimises (`--objective`) and what it must meet
(`--constraint`), and the Pareto front of its trials.

    objectives = parse_objectives("val_top1,latency_ms")        # (Objective(val_top1, max), Objective(latency_ms, min))
    constraints = parse_constraints(["latency_ms<=5"])
    front = pareto_front(rows, objectives, constraints)          # the trial ids of the non-dominated feasible trials

Cost metrics (everything but val_top1) depend on a config's footprint only, not on its training: tuner.costs
measures them before any trial starts. In trials.parquet and in Ray's results they are `cost_<name>` columns (a
trial's own `images_per_s` is its training throughput, a different figure).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from trainables.errors import UserError

ACCURACY = "val_top1"
# every metric an objective or a constraint may name, with the direction that is better
METRICS = {ACCURACY: "max", "params_m": "min", "model_mb": "min", "latency_ms": "min", "images_per_s": "max",
           "peak_mem_mb": "min"}
COSTS = tuple(m for m in METRICS if m != ACCURACY)
OPERATORS = ("<=", ">=")
CONSTRAINT_PATTERN = re.compile(r"^\s*([a-z_0-9]+)\s*(<=|>=|<|>|=)\s*([-+0-9.eE]+)\s*$")
RUNTIMES = {"eager": "eager", "torchscript": "torchscript_trace", "onnxruntime": "onnxruntime",
            "compile": "torch_compile"}  # --cost-runtime -> tuner.export's runtime names
DEVICES = ("cpu", "cuda")
INFEASIBLE_ACCURACY = 0.0  # what the searcher is told for a config it never trained (its constraints say why)


def column(metric: str) -> str:
    """The trials.parquet column (and Ray result key) of a metric: best_val_top1 for accuracy, cost_<name> else."""
    return "best_val_top1" if metric == ACCURACY else f"cost_{metric}"


def result_key(metric: str) -> str:
    """The key the searcher reads in a trial's last result (accuracy: the reported val_top1, as single-objective)."""
    return ACCURACY if metric == ACCURACY else f"cost_{metric}"


@dataclass(frozen=True)
class Objective:
    name: str

    @property
    def mode(self) -> str:
        return METRICS[self.name]

    def __str__(self) -> str:
        return f"{self.name} ({self.mode})"


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str  # <= or >=
    bound: float

    @property
    def known_before_training(self) -> bool:
        return self.metric in COSTS

    def violation(self, value: float) -> float:
        """Optuna's convention: <= 0 is feasible, the amount above 0 is how far off. A missing value is far off."""
        if value is None or not math.isfinite(value):
            return math.inf
        return value - self.bound if self.op == "<=" else self.bound - value

    def allows(self, value: float) -> bool:
        return self.violation(value) <= 0

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


def _names(text: str | Sequence[str]) -> list[str]:
    items = text.split(",") if isinstance(text, str) else [str(t) for t in text]
    return [t.strip() for t in items if t.strip()]


def parse_objectives(text: str | Sequence[str] | None, flag: str = "--objective") -> tuple[Objective, ...]:
    """`val_top1,latency_ms` (or a list) -> Objectives; accuracy must be one (ASHA prunes on it, the registered
    model is the most accurate feasible trial). Empty: ()."""
    if not text:
        return ()
    names = _names(text)
    for name in names:
        if name not in METRICS:
            raise UserError(f"{flag}: unknown objective '{name}'; choose from: {', '.join(METRICS)}")
    if len(set(names)) != len(names):
        raise UserError(f"{flag}: an objective is named twice in {','.join(names)}")
    if ACCURACY not in names:
        raise UserError(f"{flag} {','.join(names)}: the objectives must include {ACCURACY} (ASHA prunes on it and "
                        f"the registered model is the most accurate feasible trial)")
    return tuple(Objective(n) for n in [ACCURACY] + [n for n in names if n != ACCURACY])


def parse_constraints(texts: Iterable[str] | None, flag: str = "--constraint") -> tuple[Constraint, ...]:
    """['latency_ms<=5', 'model_mb<=20'] -> Constraints; one error line naming what is wrong with the first bad one."""
    out = []
    for text in texts or ():
        match = CONSTRAINT_PATTERN.match(str(text))
        if not match:
            raise UserError(f"{flag} {text!r}: write METRIC<=VALUE or METRIC>=VALUE, e.g. latency_ms<=5")
        metric, op, bound = match.groups()
        if metric not in METRICS:
            raise UserError(f"{flag} {text}: unknown metric '{metric}'; constraints take: {', '.join(METRICS)}")
        if op not in OPERATORS:
            raise UserError(f"{flag} {text}: use <= or >= (not {op})")
        try:
            value = float(bound)
        except ValueError:
            raise UserError(f"{flag} {text}: {bound!r} is not a number") from None
        out.append(Constraint(metric, op, value))
    return tuple(out)


def space_budget(data: dict[str, Any], fail) -> dict[str, tuple[str, ...]]:
    """A space file's `objectives:` (a list or `a,b`) and `constraints:` (a list), checked; `fail(key, message)`
    reports a mistake at its line."""
    out = {}
    for key, parse in (("objectives", parse_objectives), ("constraints", parse_constraints)):
        value = data.get(key) or ()
        try:
            parsed = parse(value if key == "objectives" or not isinstance(value, str) else [value], key)
        except UserError as exc:
            fail(key, str(exc))
        out[key] = tuple(getattr(p, "name", None) or str(p) for p in parsed)
    return out


def is_multi_objective(objectives: Sequence[Any], constraints: Sequence[Any]) -> bool:
    """Costs are measured and searched against when more than accuracy is asked for, or anything is constrained."""
    return len(objectives) > 1 or bool(constraints)


def violations(values: dict[str, float], constraints: Sequence[Constraint], key=result_key) -> list[float]:
    """Each constraint's violation for a result (or row: key=column); Optuna's constraints_func values."""
    return [c.violation(_number(values.get(key(c.metric)))) for c in constraints]


def feasible(values: dict[str, float], constraints: Sequence[Constraint], key=column) -> bool:
    return all(v <= 0 for v in violations(values, constraints, key))


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a is at least as good as b everywhere and better somewhere (values already oriented: larger is better)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def oriented(row: dict[str, Any], objectives: Sequence[Objective]) -> tuple[float, ...]:
    """A row's objective values with every direction turned to 'larger is better'."""
    return tuple(_number(row.get(column(o.name))) * (1 if o.mode == "max" else -1) for o in objectives)


def pareto_front(rows: list[dict[str, Any]], objectives: Sequence[Objective],
                 constraints: Sequence[Constraint] = ()) -> set[str]:
    """The trial ids of the rows no other feasible row dominates, among the completed feasible ones with every
    objective finite. Equal rows are all on the front. O(n^2): sweeps have hundreds of trials, not millions."""
    from tuner.results import scored

    pool = [r for r in scored(rows) if feasible(r, constraints)]
    points = [(r["trial_id"], oriented(r, objectives)) for r in pool]
    points = [(t, p) for t, p in points if all(math.isfinite(v) for v in p)]
    return {t for t, p in points if not any(dominates(q, p) for _, q in points)}


def most_accurate_feasible(rows: list[dict[str, Any]], constraints: Sequence[Constraint]) -> dict[str, Any] | None:
    from tuner.results import scored

    pool = [r for r in scored(rows) if feasible(r, constraints)]
    return max(pool, key=lambda r: r["best_val_top1"], default=None)


def _number(value: Any) -> float:
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def check_settings(runtime: str, device: str, threads: int, batch: int) -> None:
    """The --cost-* flags, one line for the first wrong one."""
    if runtime not in RUNTIMES:
        raise UserError(f"--cost-runtime {runtime}: choose one of {', '.join(RUNTIMES)}")
    if device not in DEVICES:
        raise UserError(f"--cost-device {device}: choose one of {', '.join(DEVICES)}")
    if threads < 1 or batch < 1:
        raise UserError(f"--cost-threads and --cost-batch must be positive integers, got {threads} and {batch}")
