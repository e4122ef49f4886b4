"""One Ray Tune experiment of a sweep, in its own folder: started, or restored where Ray saved state there.

    grid = fit(spec, sweep_dir, trainable, callbacks, num_samples=16, searcher=lambda: make_searcher(spec))

A sweep runs one experiment for its trials, one per --add-trials round (more-<k>/) and one for --reseed.
Whether an experiment is new or resumed is read off its folder, never passed around: Ray's saved state there
means restore (unfinished and errored trials continue from their checkpoints), none means start.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable

from trainables.data import ImageSplits
from trainables.errors import UserError
from tuner import callbacks as driver_callbacks
from tuner import results, stopping
from tuner.folder import RECORD_FILE, TRIALS_FILE, SweepFolder
from tuner.spec import SweepSpec, plain_config

KEEP_CHECKPOINTS = 2  # per trial, by validation top-1: bounds the sweep folder
MAX_FAILURES = 2  # a trial's transient failures are retried from its last checkpoint this many times
WARM_START_TOP = 5  # --warm-start runs at most this many of the earlier sweep's best configs first
GROWN_SEED_STRIDE = 7919  # a grown sweep's round k samples with seed + k * this: afresh, reproducibly


def fit(spec: SweepSpec, path: Path, trainable, callbacks: list, *, num_samples: int,
        searcher: Callable[[], Any], param_space: dict[str, Any] | None = None, scheduler=None,
        stopper: stopping.SweepStopper | None = None):
    """Run the experiment at `path` to its end (or until stopped) and return Ray's ResultGrid and the trials'
    statuses around the last step (stopping.TuneSignals: what a stop cut short). `searcher` (and `param_space`,
    `scheduler`) make a new experiment; a restored one keeps what it was started with."""
    from ray import tune

    watch = stopping.TuneSignals()
    driver_callbacks.bind([*callbacks, watch])  # a restored experiment drives these, not its pickled copies
    stopper = stopping.bind_stopper(stopper or stopping.SweepStopper(None, None))
    if tune.Tuner.can_restore(str(path)):
        check_saved_search_state(path)
        restore_deleted_latest_checkpoints(path)
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, param_space=spec.param_space() if param_space is None else param_space,
                           tune_config=tune_config(spec, num_samples, searcher(), scheduler),
                           run_config=run_config(spec, [*callbacks, watch], path, stopper))
    grid = tuner.fit()
    readable_trial_errors(path)
    return grid, watch


def make_trainable(spec: SweepSpec, splits: ImageSplits, costs=None):
    """The trial function with the data set attached and its resources: CPUs, GPU share and host memory (bytes,
    measured by size_trials), and with `costs` (a tuner.costs.CostBook) each footprint's deployment costs, which
    every trial reports (and with which a config breaking a cost budget ends untrained). A memory-mapped data set travels through the object store as a reference to its
    cache files; each trial maps them, so a node holds one copy whatever the number of trials."""
    import logging

    from ray import tune

    from tuner.packing import TrialGuard, train_classifier

    memory = spec.memory_per_trial if isinstance(spec.memory_per_trial, (int, float)) else 0
    gpus = spec.gpus_per_trial if isinstance(spec.gpus_per_trial, (int, float)) else 0.0
    resources = {"cpu": spec.cpus_per_trial, "gpu": gpus, **({"memory": int(memory)} if memory else {})}
    guard = TrialGuard(int(memory), float(gpus) if 0 < gpus < 1 else 0.0)
    # a failed trial is one line of ours (LiveProgress); its traceback stays in its error.txt, not on the terminal
    for name in ("ray.tune.execution.tune_controller", "ray.tune.tune"):  # and Tune's "trials did not complete"
        logging.getLogger(name).setLevel(logging.CRITICAL)
    extra = {"costs": costs} if costs is not None else {}
    return tune.with_resources(tune.with_parameters(train_classifier, data=splits.without_test(), guard=guard,
                                                    **extra), resources)


def user_code(spec: SweepSpec) -> list[str]:
    """Where the user's own model code lives (the top-level package or module of each `module:factory` the
    space can sample), found as the driver imports it."""
    import importlib.util

    from trainables.models import is_user_model, user_model_module

    names = set()
    for value in spec.param_space().values():
        choices = value.get("grid_search", []) if isinstance(value, dict) else getattr(value, "categories", [value])
        names |= {v for v in choices if isinstance(v, str) and is_user_model(v)}
    paths = []
    for name in sorted(names):
        top = user_model_module(name).split(".")[0]
        try:
            found = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            found = None
        if found is None:
            continue  # preflight says so, in one line
        if found.origin is None or found.origin == "namespace":  # a namespace package (no __init__.py): has
            # no file of its own, only its folder(s), one per sys.path entry holding a part of it
            paths += [str(Path(p)) for p in found.submodule_search_locations or ()]
            continue
        origin = Path(found.origin)
        if origin.is_file():  # not a built-in or frozen module
            paths.append(str(origin.parent if origin.name == "__init__.py" else origin))
    return sorted(set(paths))


def runtime_env(spec: SweepSpec) -> dict[str, Any] | None:
    """Ray's runtime environment for the trials: the user's model code shipped to every worker (py_modules), so
    a `module:factory` model works on a cluster as on this machine."""
    code = user_code(spec)
    return {"py_modules": code} if code else None


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


def run_config(spec: SweepSpec, callbacks: list, path: Path, stopper=None):
    from ray import tune

    space = spec.search_space
    return tune.RunConfig(
        name=path.name, storage_path=str(path.parent), callbacks=callbacks, verbose=0,
        stop=stopper,  # a SweepStopper pickles as a reference to the live one (stopping.bind_stopper)
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
    if spec.search_space.search == "optuna" and spec.multi_objective:
        from tuner.mo_search import MultiObjectiveSearch
        from tuner.objectives import parse_constraints, parse_objectives

        return MultiObjectiveSearch(parse_objectives(spec.objectives), parse_constraints(spec.constraints),
                                    sampler=spec.sampler, seed=seed, points=points, history=rewards)
    if spec.search_space.search == "optuna":
        return OptunaSearch(seed=seed, points_to_evaluate=list(points) or None, evaluated_rewards=rewards)
    return BasicVariantGenerator(random_state=seed, points_to_evaluate=None if rewards else list(points) or None)


def grown_searcher(spec: SweepSpec, earlier_rows: list[dict], round_index: int):
    """The searcher for --add-trials: every earlier trial's config and best validation score as its history."""
    keys = [k for k in spec.searched_keys() if k != "seed"]
    done = results.scored(earlier_rows)
    rewards: list = [r["best_val_top1"] for r in done]
    if spec.multi_objective:  # both objectives and the constraints; configs never trained teach the budget too
        from tuner.mo_search import history_of
        from tuner.objectives import parse_constraints, parse_objectives

        done = done + [r for r in earlier_rows if r["status"] == results.TrialStatus.INFEASIBLE.value]
        rewards = history_of(done, parse_objectives(spec.objectives), parse_constraints(spec.constraints))
        pairs = [(r, v) for r, v in zip(done, rewards) if all(math.isfinite(x) for x in v[0])]
        done, rewards = [r for r, _ in pairs], [v for _, v in pairs]
    points = [plain_config({k: r[k] for k in keys}) for r in done]
    return make_searcher(spec, points, list(rewards), round_index)


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
    for row in sorted(results.scored(source.read_trials()), key=warm_start_rank(spec)):
        point = plain_config({k: row[k] for k in domains if k in row})
        if point and all(fits(k, v) for k, v in point.items()) and point not in points:
            points.append(point)
    if not points:
        raise UserError(f"--warm-start {spec.warm_start}: none of its finished trials fits space '{spec.space}'")
    return points[:max(1, min(WARM_START_TOP, spec.num_samples // 2))]


def warm_start_rank(spec: SweepSpec) -> Callable[[dict[str, Any]], tuple]:
    """Sort key of an earlier sweep's trials for --warm-start: by validation top-1; for a multi-objective sweep
    the source's feasible Pareto front first (a trade-off, not just the most accurate), then its other feasible
    trials, then the rest (a single-objective source, without those columns, ranks by top-1 alone)."""
    if not spec.multi_objective:
        return lambda row: (-row["best_val_top1"],)

    def rank(row: dict[str, Any]) -> tuple:
        feasible = row.get("feasible") is not False  # unknown (no constraints recorded): as feasible
        return not (feasible and bool(row.get("pareto"))), not feasible, -row["best_val_top1"]

    return rank


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


# --- repairs: what a crash or a full disk leaves, made readable for Ray ------------------------------------------

def readable_trial_errors(experiment_dir: Path) -> int:
    """A trial that failed while the disk was full leaves an empty (or torn) error.pkl, which Ray then fails to
    unpickle when its results are read. Each such file is dropped, and the trial's error.txt says why (the trial
    still counts as failed); when even that cannot be written, the disk is full: OSError(ENOSPC)."""
    import errno
    import pickle

    mended = 0
    for pickled in experiment_dir.glob("trial_*/error.pkl"):
        try:
            pickle.loads(pickled.read_bytes())
            continue
        except Exception:  # noqa: BLE001 - EOFError, UnpicklingError, a class missing here: all unreadable
            pass
        pickled.unlink()
        try:
            with open(pickled.with_name("error.txt"), "a") as f:
                f.write("the trial's error could not be saved (the disk was full?)\n")
        except OSError as exc:
            raise OSError(errno.ENOSPC, "no space left to record a trial's error", str(pickled.parent)) from exc
        mended += 1
    return mended


def check_saved_search_state(experiment_dir: Path) -> None:
    """Ray restores a searcher from the state files it saves beside the experiment's; when one is missing or
    unreadable (the disk filled, or the driver died before the first save), Ray's resume fails and Ray then starts
    the experiment again from nothing, over the old one. A UserError says so first, and how to go on."""
    import ray.cloudpickle as cloudpickle

    wrapper = sorted(experiment_dir.glob("search_gen_state-*.json"))  # a searcher's (Optuna's), not a grid's
    if not wrapper:
        return
    searcher = sorted(experiment_dir.glob("searcher-state-*.pkl"))
    problem = "" if searcher else "no searcher-state file"
    for file in (wrapper[-1], *searcher[-1:]):
        try:
            with open(file, "rb") as f:
                cloudpickle.load(f)
        except Exception as exc:  # noqa: BLE001 - torn, empty or unpicklable: the resume could not use it
            problem = problem or f"{file.name} is unreadable: {type(exc).__name__}"
    if problem:
        folder = experiment_dir if (experiment_dir / RECORD_FILE).exists() else experiment_dir.parent
        then = (f"start a new sweep from its best configs with --warm-start {folder} --name NEW_NAME"
                if (folder / TRIALS_FILE).is_file() else "run it again under a new --name")
        raise UserError(f"--resume: Ray's saved search state in {experiment_dir} is incomplete ({problem}), as "
                        f"when the disk filled or the driver died while saving it, so the search cannot go on "
                        f"where it stopped; what it ran stays in {folder}: {then}")


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
