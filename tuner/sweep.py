"""Build and run one sweep: checks first, then Ray Tune (Optuna/grid/random + ASHA), then results and MLflow."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from trainables.data import ImageSplits, load_dataset
from trainables.errors import UserError
from tuner import final, results, tracking
from tuner.spec import SweepSpec, check_storage_writable, plain_config, read_spec, write_spec

DASHBOARD_HOST, DASHBOARD_PORT = "127.0.0.1", 8265
KEEP_CHECKPOINTS = 2  # per trial, by validation top-1: bounds the sweep folder
WARM_START_TOP = 5  # --warm-start runs at most this many of the earlier sweep's best configs first


@dataclass
class SweepOutcome:
    spec: SweepSpec
    rows: list[dict[str, Any]]
    parquet: Path
    tracking_uri: str
    parent_run_id: str
    winner: dict[str, Any] | None = None
    test: final.TestResult | None = None  # the overall winner's test figures
    model_uri: str | None = None
    finals: list[final.FamilyResult] = field(default_factory=list)  # each model family's pick, tested once

    @property
    def failures(self) -> dict[str, list[dict[str, Any]]]:
        """failed / diverged -> those trials' rows."""
        out: dict[str, list[dict[str, Any]]] = {}
        for row in self.rows:
            if row["status"] in ("failed", "diverged"):
                out.setdefault(row["status"], []).append(row)
        return out

    @property
    def exit_code(self) -> int:
        return 0 if any(r["status"] in results.COMPLETED for r in self.rows) else 1


def run_sweep(spec: SweepSpec, *, resume: bool = False, add_trials: int = 0, console: Console | None = None,
              parent_run_id: str | None = None, extra_tags: dict[str, str] | None = None) -> SweepOutcome:
    """Run a sweep, resume it (`resume`), or grow a finished one by `add_trials` trials that keep the searcher's
    history. Every user mistake raises UserError before anything is written."""
    import ray
    from ray import tune

    from tuner.progress import LiveProgress

    console = console or Console()
    # 1. Checks: nothing is written and no run is created until all of these pass.
    record: dict[str, Any] = {}
    if resume or add_trials:
        _, record = read_spec(spec.sweep_dir)
        parent_run_id = record["parent_run_id"]
    else:
        check_storage_writable(spec)
        if (spec.sweep_dir / "sweep.json").exists():
            raise UserError(f"a sweep named '{spec.name}' already exists in {spec.storage}; pass --resume to "
                            f"continue it, --add-trials N to grow it, or choose another --name")
    warm_points = warm_start_points(spec) if spec.warm_start and not (resume or add_trials) else []
    if add_trials and spec.search_space.search == "grid":
        raise UserError(f"space '{spec.space}' is a grid: every cell has run; --add-trials needs an optuna or "
                        f"random space")
    splits = load_dataset(spec.dataset, spec.data_dir, image_size=spec.search_space.folder_image_size)
    preflight_models(spec, splits)
    client = tracking.connect(spec.mlflow_uri)
    tracking_uri = tracking.current_uri()
    started_ray = start_ray(spec.address)
    try:
        if spec.gpus_per_trial == "auto":
            from tuner.packing import resolve_gpus_per_trial

            spec = dataclasses.replace(spec, gpus_per_trial=resolve_gpus_per_trial(
                spec, splits.num_classes, splits.image_size, console))
        check_resources(spec)
        console.print(f"[bold]{spec.name}[/bold]: space {spec.space} on {splits.summary()}")
        if dashboard_url:
            console.print(f"Ray dashboard: http://{dashboard_url}   MLflow: {tracking_uri}")

        # 2. The parent run and the sweep's record (for --resume and --add-trials).
        space = spec.search_space
        if parent_run_id is None:
            parent_run_id = tracking.start_parent_run(
                client, experiment=spec.space, run_name=spec.name,
                tags={"space": spec.space, "dataset": spec.dataset, "sweep_dir": str(spec.sweep_dir),
                      **tracking.provenance_tags(), **(extra_tags or {}),
                      **({"warm_start": spec.warm_start} if spec.warm_start else {})},
                params={"num_samples": spec.num_samples, "max_epochs": spec.max_epochs, "search": space.search,
                        "seed": spec.seed, "reseed": spec.reseed,
                        **{f"set.{k}": v for k, v in spec.overrides.items()}})
        record = {**record, "parent_run_id": parent_run_id, "tracking_uri": tracking_uri, "completed": False}
        rounds = record.setdefault("rounds", [])  # later Tune experiments of this sweep, in sweep_dir/<dir>
        if add_trials:
            rounds.append({"dir": f"more-{len(rounds) + 1}", "num_samples": add_trials})
        write_spec(spec, record)
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        tracker = tracking.MlflowTrials(tracking_uri, experiment_id, parent_run_id, spec.max_epochs)
        if add_trials:
            tracking.reopen_parent_run(tracker, len(rounds))
        callbacks = [tracker, LiveProgress(console, space.metric, None if space.search == "grid" else
                                           (rounds[-1]["num_samples"] if rounds else spec.num_samples))]

        # 3. Ray Tune. Data travels once through the object store; trials never re-read files.
        trainable = make_trainable(spec, splits)
        earlier_rows = results.read_trials(spec.sweep_dir) if rounds else []
        earlier_epochs = results.read_epochs(spec.sweep_dir) if rounds else []
        round_path = spec.sweep_dir / rounds[-1]["dir"] if rounds else None
        if rounds and resume and tune.Tuner.can_restore(str(round_path)):
            tuner = _restore(str(round_path), trainable)  # a grown sweep's added round, killed midway
        elif rounds:
            searcher = grown_searcher(spec, earlier_rows, len(rounds))
            tuner = _tuner(trainable, spec, rounds[-1]["num_samples"], searcher, callbacks,
                           storage=str(spec.sweep_dir), name=rounds[-1]["dir"])
        elif resume:
            tuner = _restore(str(spec.sweep_dir), trainable)
        else:
            tuner = _tuner(trainable, spec, spec.num_samples, make_searcher(spec, warm_points), callbacks,
                           storage=spec.storage, name=spec.name)
        grid = tuner.fit()

        # 4. Results: Parquet first (safe on disk whatever happens next), then re-training with new seeds.
        new_rows = results.trial_rows(grid)
        new_ids = {row["trial_id"] for row in new_rows}
        rows = sorted([r for r in earlier_rows if r["trial_id"] not in new_ids] + new_rows,
                      key=lambda r: r["trial_id"])
        parquet = results.write_trials(rows, spec.sweep_dir)
        results.write_epochs([e for e in earlier_epochs if e["trial_id"] not in new_ids] +
                             results.epoch_rows(grid), spec.sweep_dir)
        outcome = SweepOutcome(spec, rows, parquet, tracking_uri, parent_run_id)
        reseeded, reseed_rows = None, []
        if spec.reseed and any(r["status"] in results.COMPLETED for r in rows):
            reseed_rows = run_reseeds(spec, rows, trainable, tracking_uri, experiment_id, parent_run_id, console,
                                      name="reseed" if not rounds else f"reseed-{len(rounds)}")
            reseeded = final.group_reseeds(rows, reseed_rows)

        # 5. Test once: each model family's pick (chosen on validation) makes one pass over the test split.
        outcome.finals, models = final.evaluate_families(rows, splits, spec.sweep_dir, reseeded)
        if outcome.finals:
            best = max(outcome.finals, key=lambda f: f.val_top1_mean)
            outcome.winner = next(r for r in rows + reseed_rows if r["trial_id"] == best.trial_id)
            outcome.test = best.test
        try:  # MLflow may have gone away mid-sweep: the results above are safe on disk either way
            if tracker.offline:
                raise ConnectionError("unreachable during the sweep")
            tracking.log_finals(client, parent_run_id, outcome.finals, spec.sweep_dir)
            if outcome.winner is not None:
                unchanged = record.get("winner") == outcome.winner["trial_id"] and record.get("model_uri")
                outcome.model_uri = record["model_uri"] if unchanged else tracking.log_winner(
                    tracking_uri, parent_run_id, outcome.winner["trial_id"], models[outcome.winner["model"]],
                    outcome.test.metrics(), registered_name=f"{spec.space}-{spec.dataset}",
                    input_example=_input_example(splits))
            tracking.retire_lost_runs(client, parent_run_id, {r["trial_id"] for r in rows + reseed_rows})
            tracking.end_parent_run(tracking_uri, parent_run_id, "FINISHED" if outcome.exit_code == 0 else "FAILED")
        except Exception as exc:  # noqa: BLE001 - any MLflow/network failure
            console.print(f"[yellow]MLflow at {tracking_uri} failed ({type(exc).__name__}); everything is in "
                          f"{spec.sweep_dir}: replay it with python -m tuner.sync {spec.sweep_dir}[/yellow]")
        # Marked complete last: a sweep killed before this line resumes (and tests its picks) again.
        write_spec(spec, {**record, "completed": True,
                          "winner": outcome.winner["trial_id"] if outcome.winner else None,
                          "model_uri": outcome.model_uri,
                          "test": vars(outcome.test) if outcome.test is not None else None})
        return outcome
    finally:
        if started_ray:
            ray.shutdown()


def make_trainable(spec: SweepSpec, splits: ImageSplits):
    from ray import tune

    from trainables.classify import train_classifier

    return tune.with_resources(tune.with_parameters(train_classifier, data=splits.without_test()),
                               {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})


def _tuner(trainable, spec: SweepSpec, num_samples: int, searcher, callbacks: list, *, storage: str, name: str,
           param_space: dict | None = None, scheduler=None):
    from ray import tune

    return tune.Tuner(trainable, param_space=spec.param_space() if param_space is None else param_space,
                      tune_config=tune_config(spec, num_samples, searcher, scheduler),
                      run_config=run_config(spec, callbacks, storage=storage, name=name))


def _restore(path: str, trainable):
    from ray import tune

    restore_deleted_latest_checkpoints(Path(path))
    return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)


def restore_deleted_latest_checkpoints(experiment_dir: Path) -> list[Path]:
    """Ray deletes a trial's previous checkpoint (when it is not among the best kept) as soon as a new one is
    reported, but saves its experiment state only every few seconds. A driver killed in between leaves a state
    naming a deleted checkpoint, and Ray then fails that trial on resume ("does not exist on storage anymore").
    Put the trial's newest older checkpoint in its place (the trainable reads the epoch from the file, so the
    trial goes on from there); with none left, an empty folder, from which the trial starts again."""
    import json
    import shutil

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


def run_reseeds(spec: SweepSpec, rows: list[dict], trainable, tracking_uri: str, experiment_id: str,
                parent_run_id: str, console: Console, name: str) -> list[dict[str, Any]]:
    """Re-train each family's top configs with `spec.reseed` new seeds at the full budget (no early stopping by
    the scheduler), as one more Tune experiment in sweep_dir/<name>. Configs re-trained in an earlier round of
    a grown sweep are not re-trained again. Every copy goes to reseeds.parquet."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from tuner.progress import LiveProgress

    reseeds = spec.sweep_dir / results.RESEEDS_FILE
    earlier = results.read_trials(spec.sweep_dir, results.RESEEDS_FILE) if reseeds.exists() else []
    points = final.reseed_points(rows, spec.reseed_top, spec.reseed, spec.seed,
                                 done=set(final.group_reseeds(rows, [dict(r) for r in earlier])))
    path = spec.sweep_dir / name
    if not points and not tune.Tuner.can_restore(str(path)):
        return earlier
    console.print(f"re-training the top {spec.reseed_top} config(s) of each model with {spec.reseed} new seed(s): "
                  f"{len(points)} trials")
    callbacks = [tracking.MlflowTrials(tracking_uri, experiment_id, parent_run_id, spec.max_epochs,
                                       tags={"sweep.role": "reseed"}),
                 LiveProgress(console, spec.search_space.metric, len(points))]
    if tune.Tuner.can_restore(str(path)):  # resumed after a crash during the re-training
        tuner = _restore(str(path), trainable)
    else:
        tuner = _tuner(trainable, spec, len(points), BasicVariantGenerator(points_to_evaluate=points), callbacks,
                       storage=str(spec.sweep_dir), name=name, param_space=_space_of(points),
                       scheduler=FIFOScheduler())
    fresh = results.trial_rows(tuner.fit())
    fresh_ids = {r["trial_id"] for r in fresh}
    reseed_rows = [r for r in earlier if r["trial_id"] not in fresh_ids] + fresh
    results.write_trials(reseed_rows, spec.sweep_dir, results.RESEEDS_FILE)
    return reseed_rows


def _space_of(points: list[dict[str, Any]]) -> dict[str, Any]:
    """A param space holding exactly `points`: Tune only runs preset points whose keys and values it contains."""
    from ray import tune

    values: dict[str, list] = {}
    for point in points:
        for key, value in point.items():
            if value not in values.setdefault(key, []):
                values[key].append(value)
    return {k: v[0] if len(v) == 1 else tune.choice(v) for k, v in values.items()}


def make_searcher(spec: SweepSpec, points: list[dict[str, Any]] = (), rewards: list[float] | None = None,
                  round_index: int = 0):
    """Optuna TPE for optuna spaces, Tune's variant generator (grid cells and/or random samples) otherwise.

    `points` run first (a warm start); with `rewards` they are history the searcher learns from without running
    them (growing a sweep)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    seed = spec.seed + 7919 * round_index  # a grown sweep samples afresh, reproducibly
    if spec.search_space.search == "optuna":
        return OptunaSearch(seed=seed, points_to_evaluate=list(points) or None, evaluated_rewards=rewards)
    return BasicVariantGenerator(random_state=seed, points_to_evaluate=None if rewards else list(points) or None)


def grown_searcher(spec: SweepSpec, earlier_rows: list[dict], round_index: int):
    """The searcher for --add-trials: every earlier trial's config and best validation score as its history."""
    keys = [k for k in spec.searched_keys() if k != "seed"]
    scored = [r for r in earlier_rows if r["status"] in results.COMPLETED and r["best_val_top1"] == r["best_val_top1"]]
    points = [plain_config({k: r[k] for k in keys}) for r in scored]
    return make_searcher(spec, points, [r["best_val_top1"] for r in scored], round_index)


def warm_start_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """The best configs of an earlier sweep (--warm-start), limited to this space's searched keys and ranges."""
    from ray.tune.search.sample import Categorical, Domain

    if spec.search_space.search == "grid":
        raise UserError(f"space '{spec.space}' is a grid: --warm-start needs an optuna or random space")
    earlier = results.read_trials(Path(spec.warm_start))  # spec.build_spec checked it is there
    domains = {k: v for k, v in spec.param_space().items() if isinstance(v, Domain)}

    def fits(key: str, value: Any) -> bool:
        domain = domains[key]
        if isinstance(domain, Categorical):
            return value in domain.categories
        return value is not None and value == value and domain.lower <= value <= domain.upper

    ranked = sorted((r for r in earlier if r["status"] in results.COMPLETED and r["best_val_top1"] == r["best_val_top1"]),
                    key=lambda r: -r["best_val_top1"])
    points = []
    for row in ranked:
        point = plain_config({k: row[k] for k in domains if k in row})
        if point and all(fits(k, v) for k, v in point.items()) and point not in points:
            points.append(point)
    if not points:
        raise UserError(f"--warm-start {spec.warm_start}: none of its finished trials fits space '{spec.space}'")
    return points[:max(1, min(WARM_START_TOP, spec.num_samples // 2))]


def preflight_models(spec: SweepSpec, splits: ImageSplits, samples: int = 8) -> None:
    """Build each model a sweep samples (and load its pretrained weights) on the driver, so a model that cannot
    be built or a weights file that does not fit is one clear line now, not a failed trial later."""
    import torch

    from trainables.classify import build_model
    from trainables.config import TrialConfig
    from tuner.spec import sample_configs

    seen = set()
    for config in sample_configs(spec, samples):
        cfg = TrialConfig.from_dict(config)
        key = (cfg.model, cfg.image_size, cfg.pretrained, cfg.vit_patch, cfg.vit_dim, cfg.vit_heads)
        if key not in seen:
            seen.add(key)
            build_model(cfg, splits.num_classes, torch.device("cpu"), cfg.image_size or splits.image_size)


def tune_config(spec: SweepSpec, num_samples: int | None = None, searcher=None, scheduler=None):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    space = spec.search_space
    if scheduler is None:
        scheduler = FIFOScheduler()
        if space.asha is not None:
            scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.max_epochs,
                                      grace_period=min(space.asha.grace_period, spec.max_epochs),
                                      reduction_factor=space.asha.reduction_factor)
    return tune.TuneConfig(metric=space.metric, mode=space.mode, search_alg=searcher or make_searcher(spec),
                           scheduler=scheduler, num_samples=spec.num_samples if num_samples is None else num_samples,
                           max_concurrent_trials=spec.max_concurrent, reuse_actors=True,
                           trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}")


def run_config(spec: SweepSpec, callbacks: list, *, storage: str | None = None, name: str | None = None):
    from ray import tune

    space = spec.search_space
    return tune.RunConfig(
        name=name or spec.name, storage_path=storage or spec.storage, callbacks=callbacks, verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS, checkpoint_score_attribute=space.metric,
                                                checkpoint_score_order=space.mode),
        failure_config=tune.FailureConfig(max_failures=2))  # transient failures resume from the last checkpoint


def start_ray(address: str | None) -> bool:
    """Join `address` (auto, HOST:PORT, ray://HOST:PORT), or start a local instance (dashboard on loopback).
    True if we started it.

    Joining a cluster started with `ray start`, which uses token authentication by default: when
    RAY_AUTH_MODE is unset and a token is at hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token),
    the driver sends it, as Ray itself does only for `auto` (a cluster without authentication ignores it).
    The address must answer within a few seconds (ray.init would retry for minutes), and every failure to
    join is one UserError line saying what to check.
    """
    import socket
    import time

    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own progress display replaces Tune's console output
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False, "configure_logging": True}
    if not address:
        port = _free_port(DASHBOARD_HOST, DASHBOARD_PORT)
        for attempt in (1, 2, 3):
            try:
                context = ray.init(include_dashboard=True, dashboard_host=DASHBOARD_HOST, dashboard_port=port,
                                   **kwargs)
                break
            except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception when the dashboard cannot bind
                # another Ray on this machine took the free port between our probe and the dashboard's bind
                if attempt == 3 or "address already in use" not in str(exc):
                    raise
                ray.shutdown()
                port = _free_port(DASHBOARD_HOST, 0)
        global dashboard_url
        dashboard_url = context.dashboard_url or ""
        return True

    def fail(why: str) -> UserError:
        return UserError(f"cannot join the Ray cluster at --address {address}: {why}")

    # 1. Where to knock: HOST:PORT as given; `auto` as Ray resolves it ($RAY_ADDRESS, else this machine's
    #    latest `ray start`); ray://HOST:PORT is the head's Ray Client server (`ray start --ray-client-server-port`).
    target = address[len("ray://"):] if address.startswith("ray://") else address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address("auto")
        except ImportError:  # a Ray without this helper: ray.init resolves `auto` itself below
            target = None
        except ConnectionError:
            raise fail("no running Ray cluster found on this machine and RAY_ADDRESS is not set; start one "
                       "with `ray start --head`, or pass --address HOST:PORT") from None
    if target:
        host, sep, port = target.rpartition(":")
        host = host.strip("[]")  # [::1]:6379
        if not sep or not host or not port.isdigit():
            raise fail("expected auto, HOST:PORT or ray://HOST:PORT")
        try:
            with socket.create_connection((host, int(port)), timeout=5):
                pass
        except OSError as exc:
            raise fail(f"nothing answers at {host}:{port} ({exc.strerror or type(exc).__name__}); is "
                       f"`ray start --head` running there, and is the port open to this machine?") from None

    # 2. Token authentication, as the cluster's nodes have it.
    from ray.exceptions import AuthenticationError

    token_found = False
    try:
        from ray._private.authentication import authentication_token_setup as token_setup
        from ray._raylet import AuthenticationTokenLoader

        token_found = AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True)
        if token_found and os.environ.get("RAY_AUTH_MODE") is None:
            quiet = logging.getLogger(token_setup.__name__)
            level = quiet.level
            quiet.setLevel(logging.ERROR)  # Ray's "token authentication is enabled for this cluster" notice
            try:
                token_setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
            finally:
                quiet.setLevel(level)
    except ImportError:  # a Ray without token authentication
        pass
    except AuthenticationError as exc:  # e.g. RAY_AUTH_TOKEN_PATH names a missing or empty file
        raise fail(str(exc).split(". ")[0]) from None

    # 3. Join. Ray Client (ray://) starts a server process per driver on the head, which now and then fails
    #    to come up (ConnectionAbortedError "Initialization failure from server"): one more try.
    for attempt in (1, 2):
        try:
            ray.init(address=address, **kwargs)
            break
        except (ConnectionError, RuntimeError, ValueError, TimeoutError, AuthenticationError) as exc:
            if attempt == 1 and address.startswith("ray://") and isinstance(exc, ConnectionAbortedError):
                ray.shutdown()
                time.sleep(2)
                continue
            detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if token_found and os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
                source = ("$RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else
                          os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")
                hint = (f"this driver sent the token from {source}: is it the head's (`ray get-auth-token` on "
                        f"the head prints it)? Ray and Python must also be the cluster's versions")
            else:
                hint = ("clusters started by `ray start` use token authentication by default: give this driver "
                        "the head's token with RAY_AUTH_TOKEN_PATH=FILE or RAY_AUTH_TOKEN=TOKEN (`ray "
                        "get-auth-token` on the head prints it), and leave RAY_AUTH_MODE unset or set to token")
            raise fail(f"{detail}; {hint}") from None
    return False


dashboard_url = ""  # of the Ray instance this process started


def _free_port(host: str, preferred: int) -> int:
    """The preferred port if free (another Ray may hold 8265), else any free one."""
    import socket

    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind((host, port))
                return s.getsockname()[1]
            except OSError:
                continue
    return preferred


def check_resources(spec: SweepSpec) -> None:
    """Fail at once when no node could ever run a trial, instead of leaving trials pending forever."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    max_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    max_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    if spec.gpus_per_trial > 0 and max_gpus == 0:
        raise UserError(f"--gpus-per-trial {spec.gpus_per_trial:g} but the Ray cluster has no GPU; use "
                        f"--gpus-per-trial 0 to train on CPU, or --address a cluster with GPUs")
    if spec.gpus_per_trial > max_gpus:
        raise UserError(f"--gpus-per-trial {spec.gpus_per_trial:g} but the largest node has {max_gpus:g} GPU(s)")
    if spec.cpus_per_trial > max_cpus:
        raise UserError(f"--cpus-per-trial {spec.cpus_per_trial:g} but the largest node has {max_cpus:g} CPU(s)")


def _input_example(splits: ImageSplits) -> np.ndarray:
    """Two validation images as float [0, 1]: what the registered model (with its preprocessing) takes."""
    return splits.val_x[:2].astype(np.float32) / 255.0
