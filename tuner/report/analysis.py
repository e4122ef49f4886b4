"""What the report computes from a sweep's tables, with no drawing and no files: which parameters were searched,
an in-memory Optuna study of the trials, fANOVA importances, ASHA's rungs and who survived them, trials by status.

Tables are pandas DataFrames (tuner.folder.Sweep.frames). Key lists come from the shared vocabulary: config keys
from trainables.config.TrialConfig (LOG_SCALE keys get log distributions; PROVENANCE keys are never an axis),
statuses from tuner.results.TrialStatus.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

from trainables.config import LOG_SCALE, PROVENANCE, TrialConfig
from trainables.errors import error_line
from tuner.results import COMPLETED, TrialStatus

MIN_IMPORTANCE_TRIALS = 4  # fewer completed trials: no importance, and the report says why
OBJECTIVE = "best_val_top1"  # what trials were selected on


def searched_params(trials, candidates: list[str] | None = None) -> list[str]:
    """Trial-config keys whose value differs between trials: what the search varied (or a grid's axes).

    `candidates` (the spec's searched keys) limits them, so a key that varies for another reason (a stage's epoch
    budget) is no axis; PROVENANCE keys (seed, pretrained weights) never are.
    """
    never = set(TrialConfig.tagged(PROVENANCE))
    allowed = None if candidates is None else set(candidates)
    return [key for key in TrialConfig.keys()
            if key in trials.columns and key not in never and (allowed is None or key in allowed)
            and trials[key].dropna().map(repr).nunique() > 1]


def spec_searched_keys(spec) -> list[str] | None:
    """The keys the sweep's space searches, or None when this installation does not know the space."""
    try:
        return list(spec.searched_keys())
    except Exception:  # noqa: BLE001 - a renamed or removed space: every varying key counts
        return None


def completed(trials):
    """Rows whose validation figure counts (finished, stopped early or by ASHA) and is finite."""
    import pandas as pd

    rows = trials[trials["status"].isin([s.value for s in COMPLETED])] if "status" in trials else trials
    values = pd.to_numeric(rows[OBJECTIVE], errors="coerce")
    return rows[values.notna() & (values.abs() != math.inf)]  # a boolean mask, also when there are no rows


def ranked(trials):
    """Trials with a validation figure, best first (ties: trial id)."""
    valid = trials[trials[OBJECTIVE].notna()]
    return valid.sort_values([OBJECTIVE, "trial_id"], ascending=[False, True])


def python_value(value: Any) -> Any:
    """numpy scalars -> Python scalars (Optuna's distributions take only None, bool, int, float, str)."""
    return value.item() if hasattr(value, "item") else value


def is_missing(value: Any) -> bool:
    try:
        return value is None or isinstance(value, float) and math.isnan(value) or \
            (hasattr(value, "dtype") and bool(value != value))
    except (TypeError, ValueError):
        return False


def distribution_of(name: str, values) -> Any:
    """The Optuna distribution a column's values were drawn from, inferred from the values themselves."""
    import pandas as pd
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    values = values.dropna()
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return CategoricalDistribution(sorted({python_value(v) for v in values}, key=repr))
    low, high = python_value(values.min()), python_value(values.max())
    log = name in TrialConfig.tagged(LOG_SCALE) and low > 0
    if pd.api.types.is_integer_dtype(values):
        return IntDistribution(int(low), int(high), log=log)
    return FloatDistribution(float(low), float(high), log=log)


def study_of(trials, params: list[str]):
    """An in-memory Optuna study (maximising best val top-1) with one COMPLETE trial per completed row.

    ASHA's stopped trials count with the figure they reached, as in Optuna's own ASHA studies. Each parameter's
    distribution is inferred from its values; each trial's `trial_id` is a user attribute. Optuna numbers the
    trials in trial-id order.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    rows = completed(trials).sort_values("trial_id")
    distributions = {p: distribution_of(p, rows[p]) for p in params if p in rows and rows[p].notna().any()}
    study = optuna.create_study(direction="maximize")
    for _, row in rows.iterrows():
        values = {p: python_value(row[p]) for p in distributions if not is_missing(row[p])}
        study.add_trial(optuna.trial.create_trial(
            params=values, distributions={p: distributions[p] for p in values}, value=float(row[OBJECTIVE]),
            user_attrs={"trial_id": str(row["trial_id"])}))
    return study


@dataclass
class Importance:
    """Parameter importances (summing to 1), or why there are none."""

    values: dict[str, float] = field(default_factory=dict)
    reason: str = ""  # set when values is empty
    trials: int = 0
    evaluator: str = "fANOVA"
    study: Any = None  # the Optuna study they were computed on (None when there are none)
    seed: int = 0


def param_importance(trials, params: list[str] | None = None, *, seed: int = 0) -> Importance:
    """Optuna's fANOVA importances of the searched parameters for best_val_top1, on study_of(trials).

    Fewer than two parameters that vary among the completed trials, too few trials, or a constant objective: no
    importances, and `reason` says which.
    """
    import optuna

    params = searched_params(trials) if params is None else list(params)
    rows = completed(trials)
    varying = [p for p in params if p in rows.columns and rows[p].dropna().map(repr).nunique() > 1]
    result = Importance(trials=len(rows), seed=seed)
    if len(varying) < 2:
        result.reason = (f"importance ranks two or more searched parameters; among the {len(rows)} completed trials "
                         f"{len(varying)} varied" + (f" ({', '.join(varying)})" if varying else ""))
        return result
    if len(rows) < MIN_IMPORTANCE_TRIALS:
        result.reason = (f"importance needs at least {MIN_IMPORTANCE_TRIALS} completed trials; this sweep has "
                         f"{len(rows)}")
        return result
    if rows[OBJECTIVE].nunique() < 2:
        result.reason = f"every completed trial reached the same validation top-1 ({rows[OBJECTIVE].iloc[0]:.2f})"
        return result
    study = study_of(rows, varying)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study, evaluator=fanova(seed), params=varying)
    except Exception as exc:  # noqa: BLE001 - the evaluator's own complaint, e.g. degenerate data
        result.reason = f"Optuna's fANOVA evaluator failed: {error_line(exc)}"
        return result
    result.values = {k: float(v) for k, v in importances.items()}
    result.study = study
    return result


def fanova(seed: int):
    import optuna

    return optuna.importance.FanovaImportanceEvaluator(seed=seed)


def asha_rungs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The epochs at which Ray Tune's ASHA compares trials (its rung milestones below max_t)."""
    if grace_period < 1 or reduction_factor <= 1 or max_t <= grace_period:
        return []
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return sorted({int(grace_period * reduction_factor ** k) for k in range(count)
                   if grace_period * reduction_factor ** k < max_t})


def rung_survival(epochs, trials) -> list[tuple[int, int]]:
    """(epoch, trials that reached it) for every epoch from 1 to the furthest any trial got.

    From epochs.parquet (the epochs each trial reported), else the trials table's `epochs` column.
    """
    if epochs is not None and len(epochs):
        reached = epochs.groupby("trial_id")["epoch"].max()
        reached = reached.reindex(trials["trial_id"]).fillna(0) if "trial_id" in trials else reached
    elif "epochs" in trials:
        reached = trials["epochs"].fillna(0)
    else:
        return []
    furthest = int(reached.max()) if len(reached) else 0
    return [(epoch, int((reached >= epoch).sum())) for epoch in range(1, furthest + 1)]


def space_rungs(spec) -> tuple[list[int], str]:
    """The sweep's ASHA milestones and a caption, from its space's settings; ([], why) without ASHA."""
    try:
        space = spec.search_space
    except Exception:  # noqa: BLE001 - an unknown or renamed space: no rungs to mark
        return [], "space unknown"
    if space.asha is None:
        return [], "no ASHA scheduler in this space"
    max_t = int(spec.max_epochs or space.max_epochs)
    rungs = asha_rungs(space.asha.grace_period, space.asha.reduction_factor, max_t)
    return rungs, f"ASHA grace period {space.asha.grace_period}, reduction factor {space.asha.reduction_factor:g}"


def status_summary(trials) -> list[tuple[str, int, float]]:
    """(status, trials, summed trial wall seconds), in TrialStatus's order, then any status it does not know."""
    if "status" not in trials:
        return []
    known = [s.value for s in TrialStatus]
    statuses = sorted(trials["status"].fillna("unknown").unique(),
                      key=lambda s: (known.index(s) if s in known else len(known), s))
    wall = trials["wall_s"].fillna(0.0) if "wall_s" in trials else None
    return [(s, int((trials["status"] == s).sum()), float(wall[trials["status"] == s].sum()) if wall is not None
             else math.nan) for s in statuses]


def families(trials) -> list[str]:
    """The model families with a scored trial, best first."""
    scored = ranked(trials)
    if "model" not in scored or not len(scored):
        return []
    best = scored.groupby("model")[OBJECTIVE].max()
    return sorted(best.index, key=lambda m: (-best[m], str(m)))


def loss_kinds(trials) -> dict[str, list[str]]:
    """The trials grouped by the kind of training loss they report ({'ce': [ids], 'bce': [ids]}), in
    TrialConfig's order of the `loss` choices: losses of different kinds are not on one scale."""
    if "loss" not in trials:
        return {"": list(trials["trial_id"])}
    order = {kind: i for i, kind in enumerate(loss_choices())}
    groups: dict[str, list[str]] = {}
    for trial_id, kind in zip(trials["trial_id"], trials["loss"].fillna("")):
        groups.setdefault(str(kind), []).append(trial_id)
    return dict(sorted(groups.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def loss_choices() -> tuple[str, ...]:
    import dataclasses

    knob = {f.name: f for f in dataclasses.fields(TrialConfig)}["loss"]
    return tuple(knob.metadata.get("choices") or ())
