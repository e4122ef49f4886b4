"""Optuna's multi-objective search through Ray Tune's OptunaSearch, with constraints the sampler learns from.

- The study has one direction per objective (val_top1 max, latency_ms min, ...); at a trial's end OptunaSearch
  tells it the values in the trial's last result (val_top1, cost_latency_ms, ...: the costs are reported,
  constant, with every epoch).
- Constraints reach the sampler (TPE or NSGA-II) as the trial's named constraints (Trial.set_constraint, what
  Optuna 5 reads in place of the deprecated constraints_func): the violations of its last result, set just
  before the tell. A config that breaks a cost budget
  is never trained (the trial reports its costs at epoch 0 and ends, `infeasible`); the study is told accuracy 0
  for it with its violations, so the sampler learns where the budget lies and samples there less.
- Tune's own metric stays val_top1 (max): ASHA prunes on it. This searcher keeps its list of metrics when Tune
  hands it that one (set_search_properties).
- History (--add-trials): earlier trials are added as finished trials with all their values and constraints.
- --resume: Ray pickles the searcher with its study (directions, every trial's values and constraints) and
  sampler, so both objectives carry on.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from ray.tune.search.optuna import OptunaSearch

from tuner.objectives import ACCURACY, INFEASIBLE_ACCURACY, Constraint, Objective, result_key, violations
from tuner.results import TrialStatus

NSGA2_POPULATION = 8  # sweeps run tens of trials, not NSGA-II's default 50 per generation


def make_sampler(name: str, seed: int):
    """TPE or NSGA-II; both read each trial's constraints (Trial.set_constraint: Optuna 5 deprecates the
    samplers' constraints_func for it) and rank infeasible trials below feasible ones."""
    import optuna

    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=NSGA2_POPULATION)
    return optuna.samplers.TPESampler(seed=seed)


def constraint_values(constraints: Sequence[Constraint], broken: Sequence[float]) -> dict[str, float]:
    """{"latency_ms<=5": violation, ...}: Optuna's named constraints (<= 0 feasible), finite."""
    return {str(c): v if math.isfinite(v) else 1e9 for c, v in zip(constraints, broken)}


class MultiObjectiveSearch(OptunaSearch):
    """OptunaSearch over several objectives and constraints (see the module's docstring)."""

    def __init__(self, objectives: Sequence[Objective], constraints: Sequence[Constraint], *, sampler: str = "tpe",
                 seed: int = 0, points: list[dict[str, Any]] = (),
                 history: list[tuple[list[float], list[float]]] | None = None):
        self.objectives, self.constraints = tuple(objectives), tuple(constraints)
        super().__init__(metric=[result_key(o.name) for o in self.objectives],
                         mode=[o.mode for o in self.objectives],
                         sampler=make_sampler(sampler, seed),
                         points_to_evaluate=list(points) or None,
                         evaluated_rewards=list(history) if history else None)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        # Tune passes its own metric (val_top1, ASHA's); the study keeps one direction per objective
        return super().set_search_properties(None, None, config, **spec)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            if result.get("infeasible"):
                result = {**result, ACCURACY: INFEASIBLE_ACCURACY}
            broken = constraint_values(self.constraints, violations(result, self.constraints))
            for name, value in broken.items():
                self._ot_trials[trial_id].set_constraint(name, value)
        super().on_trial_complete(trial_id, result, error)

    def add_evaluated_point(self, parameters: dict, value, error: bool = False, pruned: bool = False,
                            intermediate_values=None) -> None:
        """An earlier trial as history: `value` is (its objective values, its constraint violations)."""
        import optuna

        values, broken = value
        self._ot_study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE, values=list(values), params=parameters,
            distributions=self._space, constraints=constraint_values(self.constraints, broken) or None))


def history_of(rows: list[dict[str, Any]], objectives: Sequence[Objective],
               constraints: Sequence[Constraint]) -> list[tuple[list[float], list[float]]]:
    """(values, violations) per row, in the searcher's terms: an infeasible trial's accuracy is 0."""
    from tuner.objectives import column

    out = []
    for row in rows:
        values = {**row, "best_val_top1": INFEASIBLE_ACCURACY if row["status"] == TrialStatus.INFEASIBLE
                  else row["best_val_top1"]}
        out.append(([float(values[column(o.name)]) for o in objectives],
                    violations(values, constraints, key=column)))
    return out

