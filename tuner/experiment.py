"""One Ray Tune experiment of a sweep, in its own folder: started, or restored where Ray saved state there.

    grid = fit(spec, sweep_dir, trainable, callbacks, num_samples=16, searcher=lambda: make_searcher(spec))

A sweep runs one experiment for its trials, one per --add-trials round (more-<k>/) and one for --reseed.
Whether an experiment is new or resumed is read off its folder, never passed around: Ray's saved state there
means restore (unfinished and errored trials continue from their checkpoints), none means start.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from trainables.data import ImageSplits
from trainables.errors import UserError
from tuner import callbacks as driver_callbacks
from tuner import results
from tuner.folder import TRIALS_FILE, SweepFolder
from tuner.spec import SweepSpec, plain_config

KEEP_CHECKPOINTS = 2  # per trial, by validation top-1: bounds the sweep folder
MAX_FAILURES = 2  # a trial's transient failures are retried from its last checkpoint this many times
WARM_START_TOP = 5  # --warm-start runs at most this many of the earlier sweep's best configs first
GROWN_SEED_STRIDE = 7919  # a grown sweep's round k samples with seed + k * this: afresh, reproducibly


def fit(spec: SweepSpec, path: Path, trainable, callbacks: list, *, num_samples: int,
        searcher: Callable[[], Any], param_space: dict[str, Any] | None = None, scheduler=None):
    """Run the experiment at `path` to its end and return Ray's ResultGrid. `searcher` (and `param_space`,
    `scheduler`) make a new experiment; a restored one keeps what it was started with."""
    from ray import tune

    driver_callbacks.bind(callbacks)  # a restored experiment drives these, not the copies pickled in its state
    if tune.Tuner.can_restore(str(path)):
        restore_deleted_latest_checkpoints(path)
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, param_space=spec.param_space() if param_space is None else param_space,
                           tune_config=tune_config(spec, num_samples, searcher(), scheduler),
                           run_config=run_config(spec, callbacks, path))
    return tuner.fit()


def make_trainable(spec: SweepSpec, splits: ImageSplits):
    """The trial function with the data set attached (through Ray's object store, once) and its resources."""
    from ray import tune

    from trainables.classify import train_classifier

    return tune.with_resources(tune.with_parameters(train_classifier, data=splits.without_test()),
                               {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})


def tune_config(spec: SweepSpec, num_samples: int, searcher, scheduler=None):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    space = spec.search_space
    if scheduler is None:
        scheduler = FIFOScheduler()
        if space.asha is not None:
            scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.max_epochs,
                                      grace_period=min(space.asha.grace_period, spec.max_epochs),
                                      reduction_factor=space.asha.reduction_factor)
    return tune.TuneConfig(metric=space.metric, mode=space.mode, search_alg=searcher, scheduler=scheduler,
                           num_samples=num_samples, max_concurrent_trials=spec.max_concurrent, reuse_actors=True,
                           trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}")


def run_config(spec: SweepSpec, callbacks: list, path: Path):
    from ray import tune

    space = spec.search_space
    return tune.RunConfig(
        name=path.name, storage_path=str(path.parent), callbacks=callbacks, verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS, checkpoint_score_attribute=space.metric,
                                                checkpoint_score_order=space.mode),
        failure_config=tune.FailureConfig(max_failures=MAX_FAILURES))


# --- searchers ---------------------------------------------------------------------------------------------------

def make_searcher(spec: SweepSpec, points: list[dict[str, Any]] = (), rewards: list[float] | None = None,
                  round_index: int = 0):
    """Optuna TPE for optuna spaces, Tune's variant generator (grid cells and/or random samples) otherwise.

    `points` run first (a warm start); with `rewards` they are history the searcher learns from without running
    them (growing a sweep)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    seed = spec.seed + GROWN_SEED_STRIDE * round_index
    if spec.search_space.search == "optuna":
        return OptunaSearch(seed=seed, points_to_evaluate=list(points) or None, evaluated_rewards=rewards)
    return BasicVariantGenerator(random_state=seed, points_to_evaluate=None if rewards else list(points) or None)


def grown_searcher(spec: SweepSpec, earlier_rows: list[dict], round_index: int):
    """The searcher for --add-trials: every earlier trial's config and best validation score as its history."""
    keys = [k for k in spec.searched_keys() if k != "seed"]
    done = results.scored(earlier_rows)
    points = [plain_config({k: r[k] for k in keys}) for r in done]
    return make_searcher(spec, points, [r["best_val_top1"] for r in done], round_index)


def warm_start_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """The best configs of an earlier sweep (--warm-start), limited to this space's searched keys and ranges."""
    from ray.tune.search.sample import Categorical, Domain

    if spec.search_space.search == "grid":
        raise UserError(f"space '{spec.space}' is a grid: --warm-start needs an optuna or random space")
    source = SweepFolder(spec.warm_start)
    if not source.file(TRIALS_FILE).is_file():
        raise UserError(f"--warm-start {spec.warm_start}: no trials.parquet there; name a finished sweep's folder "
                        f"(STORAGE/NAME)")
    domains = {k: v for k, v in spec.param_space().items() if isinstance(v, Domain)}

    def fits(key: str, value: Any) -> bool:
        domain = domains[key]
        if isinstance(domain, Categorical):
            return value in domain.categories
        return value is not None and value == value and domain.lower <= value <= domain.upper

    points = []
    for row in sorted(results.scored(source.read_trials()), key=lambda r: -r["best_val_top1"]):
        point = plain_config({k: row[k] for k in domains if k in row})
        if point and all(fits(k, v) for k, v in point.items()) and point not in points:
            points.append(point)
    if not points:
        raise UserError(f"--warm-start {spec.warm_start}: none of its finished trials fits space '{spec.space}'")
    return points[:max(1, min(WARM_START_TOP, spec.num_samples // 2))]


def preset_points(points: list[dict[str, Any]]):
    """A searcher and a param space that run exactly `points` (--reseed's re-trained configs)."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    values: dict[str, list] = {}
    for point in points:
        for key, value in point.items():
            if value not in values.setdefault(key, []):
                values[key].append(value)
    # Tune only runs preset points whose keys and values its param space contains
    space = {k: v[0] if len(v) == 1 else tune.choice(v) for k, v in values.items()}
    return BasicVariantGenerator(points_to_evaluate=points), space


# --- checkpoint repair before a restore ----------------------------------------------------------------------------

def restore_deleted_latest_checkpoints(experiment_dir: Path) -> list[Path]:
    """Ray deletes a trial's previous checkpoint (when it is not among the best kept) as soon as a new one is
    reported, but saves its experiment state only every few seconds. A driver killed in between leaves a state
    naming a deleted checkpoint, and Ray then fails that trial on resume ("does not exist on storage anymore").
    Put the trial's newest older checkpoint in its place (the trainable reads the epoch from the file, so the
    trial goes on from there); with none left, an empty folder, from which the trial starts again."""
    states = sorted(experiment_dir.glob("experiment_state-*.json"))
    if not states:
        return []
    try:
        trial_data = json.loads(states[-1].read_text())["trial_data"]
    except (OSError, ValueError, KeyError):
        return []  # Ray reports an unreadable state itself
    restored = []
    for trial_json, runtime_json in trial_data:
        try:
            trial_id = json.loads(trial_json)["trial_id"]
            name = (json.loads(runtime_json).get("last_result") or {}).get("checkpoint_dir_name")
        except (ValueError, KeyError, TypeError):
            continue
        trial_dir = experiment_dir / f"trial_{trial_id}"
        if not name or not trial_dir.is_dir() or (trial_dir / name).exists():
            continue
        older = sorted(p for p in trial_dir.glob("checkpoint_*") if p.name < name)
        if older:
            shutil.copytree(older[-1], trial_dir / name)
        else:
            (trial_dir / name).mkdir()
        restored.append(trial_dir / name)
    return restored
