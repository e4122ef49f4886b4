"""One sweep as a short list of named phases, each passing a value on to the next:

    check → prepare data → reach MLflow → (Ray cluster) size trials → open tracking → run the experiment
    → save tables → reseed → test once → publish → mark complete

`run_sweep` starts a sweep, resumes it (`resume`: its experiment is restored from Ray's state where there is
some) or grows a finished one (`add_trials`: one more Tune experiment whose searcher knows every earlier trial).
Nothing is written, and no run is created, until the checks pass; the sweep is marked complete last, so a sweep
killed at any point before resumes and finishes what it had not.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from rich.console import Console

from trainables.data import ImageSplits, load_dataset
from trainables.errors import UserError
from tuner import cluster, experiment, final, results, tracking
from tuner.dryrun import preflight_models
from tuner.folder import ROUND_DIR, Sweep, SweepFolder, SweepRecord
from tuner.progress import LiveProgress
from tuner.reseed import group_reseeds, run_reseeds
from tuner.spec import SweepSpec, check_storage_writable


@dataclass
class Plan:
    """What the checks decided: the record to continue (None: a new sweep), and which experiment runs."""

    spec: SweepSpec
    folder: SweepFolder
    record: SweepRecord | None
    round_index: int = 0  # 0: the sweep's own experiment; k: the k-th --add-trials round (more-<k>/)
    add_trials: int = 0
    warm_points: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Tracking:
    """The sweep's MLflow side once its parent run exists."""

    client: Any
    uri: str
    record: SweepRecord
    experiment_id: str
    tracker: tracking.MlflowTrials

    def callbacks(self, console: Console, metric: str, total: int | None, role: str | None = None) -> list:
        """Fresh callbacks for one experiment: its trials mirrored to MLflow, and the live view."""
        tracker = self.tracker if role is None else tracking.MlflowTrials(
            self.uri, self.experiment_id, self.record.parent_run_id, self.record.spec.max_epochs,
            tags={"sweep.role": role})
        return [tracker, LiveProgress(console, metric, total)]


def run_sweep(spec: SweepSpec, *, resume: bool = False, add_trials: int = 0, console: Console | None = None,
              extra_tags: dict[str, str] | None = None) -> Sweep:
    """Run, resume or grow the sweep `spec` names, and return its folder as read back at the end."""
    console = console or Console(highlight=False)
    plan = check(spec, resume=resume, add_trials=add_trials)
    splits = prepare_data(plan.spec)
    client = tracking.connect(plan.spec.mlflow_uri)  # before Ray starts: an unreachable MLflow fails fast
    with cluster.connect(plan.spec.address) as ray_cluster:
        plan = dataclasses.replace(plan, spec=size_trials(plan.spec, splits, ray_cluster, console))
        console.print(f"[bold]{plan.spec.name}[/bold]: space {plan.spec.space} on {splits.summary()}")
        if ray_cluster.dashboard_url:
            console.print(f"Ray dashboard: {ray_cluster.dashboard_url}   MLflow: {tracking.current_uri()}")
        track = open_tracking(plan, client, extra_tags or {})
        trainable = experiment.make_trainable(plan.spec, splits)
        earlier = plan.folder.read_trials() if plan.round_index else []
        grid = run_experiment(plan, track, trainable, earlier, console)
        rows = save_tables(plan.folder, grid, earlier)
        reseeded, reseed_rows = reseed(plan, track, trainable, rows, console)
        finals, models = final.evaluate_families(rows, splits, plan.folder, reseeded)
        publish(plan, track, rows + reseed_rows, finals, models, splits, console)
        mark_complete(plan.folder, track.record, rows + reseed_rows, finals)
    return plan.folder.load()


def check(spec: SweepSpec, *, resume: bool, add_trials: int) -> Plan:
    """Every check that needs no data and no cluster; raises UserError before anything is written."""
    folder = SweepFolder(spec.sweep_dir)
    if not (resume or add_trials):
        check_storage_writable(spec)
        if folder.has_record():
            raise UserError(f"a sweep named '{spec.name}' already exists in {spec.storage}; pass --resume to "
                            f"continue it, --add-trials N to grow it, or choose another --name")
        warm = experiment.warm_start_points(spec) if spec.warm_start else []
        return Plan(spec, folder, None, warm_points=warm)
    record = folder.read_record()
    if add_trials and spec.search_space.search == "grid":
        raise UserError(f"space '{spec.space}' is a grid: every cell has run; --add-trials needs an optuna or "
                        f"random space")
    return Plan(spec, folder, record, round_index=len(record.rounds) + (1 if add_trials else 0),
                add_trials=add_trials)


def prepare_data(spec: SweepSpec) -> ImageSplits:
    """The data set, loaded once for every trial, and every model the space samples built against it."""
    splits = load_dataset(spec.dataset, spec.data_dir, image_size=spec.search_space.folder_image_size)
    preflight_models(spec, splits.num_classes, splits.image_size)
    return splits


def size_trials(spec: SweepSpec, splits: ImageSplits, ray_cluster: cluster.Cluster, console: Console) -> SweepSpec:
    """What one trial asks of the cluster, measured where asked (--gpus-per-trial auto), and checked to fit."""
    if spec.gpus_per_trial == "auto":
        from tuner.packing import resolve_gpus_per_trial

        spec = dataclasses.replace(spec, gpus_per_trial=resolve_gpus_per_trial(
            spec, splits.num_classes, splits.image_size, console))
    cluster.check_resources(ray_cluster, spec.gpus_per_trial, spec.cpus_per_trial)
    return spec


def open_tracking(plan: Plan, client, extra_tags: dict[str, str]) -> Tracking:
    """The sweep's parent MLflow run (created, or the recorded one), and its record written with it."""
    spec, uri = plan.spec, tracking.current_uri()
    record = plan.record
    if record is None:
        parent_run_id = tracking.start_parent_run(
            client, experiment=spec.space, run_name=spec.name,
            tags={"space": spec.space, "dataset": spec.dataset, "sweep_dir": str(spec.sweep_dir),
                  **tracking.provenance_tags(), **extra_tags,
                  **({"warm_start": spec.warm_start} if spec.warm_start else {})},
            params={"num_samples": spec.num_samples, "max_epochs": spec.max_epochs, "search": spec.search_space.search,
                    "seed": spec.seed, "reseed": spec.reseed, **{f"set.{k}": v for k, v in spec.overrides.items()}})
        record = SweepRecord(spec, parent_run_id, uri, tags=dict(extra_tags))
    record = dataclasses.replace(record, spec=spec, completed=False)
    if plan.add_trials:
        record.rounds.append({"dir": ROUND_DIR.format(plan.round_index), "num_samples": plan.add_trials})
    plan.folder.write_record(record)
    experiment_id = client.get_run(record.parent_run_id).info.experiment_id
    tracker = tracking.MlflowTrials(uri, experiment_id, record.parent_run_id, spec.max_epochs)
    if plan.add_trials:
        tracker.reopen_parent(len(record.rounds))
    return Tracking(client, uri, record, experiment_id, tracker)


def run_experiment(plan: Plan, track: Tracking, trainable, earlier: list[dict], console: Console):
    """The Tune experiment of this run: the sweep's own, or its latest --add-trials round."""
    spec = plan.spec
    if plan.round_index:
        current = track.record.rounds[plan.round_index - 1]
        path, total = plan.folder.file(current["dir"]), current["num_samples"]
        searcher: Callable[[], Any] = lambda: experiment.grown_searcher(spec, earlier, plan.round_index)  # noqa: E731
    else:
        path, total = plan.folder.path, spec.num_samples
        searcher = lambda: experiment.make_searcher(spec, plan.warm_points)  # noqa: E731
    shown_total = None if spec.search_space.search == "grid" else total  # a grid's size is cells x samples
    callbacks = track.callbacks(console, spec.search_space.metric, shown_total)
    return experiment.fit(spec, path, trainable, callbacks, num_samples=total, searcher=searcher)


def save_tables(folder: SweepFolder, grid, earlier: list[dict]) -> list[dict[str, Any]]:
    """trials.parquet and epochs.parquet with this experiment's trials (safe on disk whatever happens next)."""
    new = results.trial_rows(grid)
    rows = results.merge(earlier, new)
    folder.write_trials(rows)
    new_ids = {r["trial_id"] for r in new}
    epochs = [e for e in folder.read_epochs() if e["trial_id"] not in new_ids] if earlier else []
    folder.write_epochs(results.merge(epochs, results.epoch_rows(grid), key=lambda e: (e["trial_id"], e["epoch"])))
    return rows


def reseed(plan: Plan, track: Tracking, trainable, rows: list[dict],
           console: Console) -> tuple[dict[str, list[dict]] | None, list[dict]]:
    """With --reseed: the top configs re-trained with new seeds, grouped by the trial they copy."""
    spec = plan.spec
    if not spec.reseed or not results.scored(rows):
        return None, []
    callbacks = track.callbacks(console, spec.search_space.metric, None, role="reseed")
    copies = run_reseeds(spec, plan.folder, rows, trainable, callbacks, plan.round_index, console)
    return group_reseeds(rows, copies), copies


def publish(plan: Plan, track: Tracking, rows: list[dict], finals: list[final.FamilyResult], models: dict,
            splits: ImageSplits, console: Console) -> None:
    """Test figures and the winner into MLflow, the parent run closed. MLflow may have gone away mid-sweep:
    everything is safe on disk either way, and tuner.sync replays it."""
    spec, record = plan.spec, track.record
    winner = _winner(rows, finals)
    try:
        if track.tracker.offline:
            raise ConnectionError("unreachable during the sweep")
        tracking.log_finals(track.client, record.parent_run_id, finals, plan.folder.path)
        if winner is not None:
            best = next(f for f in finals if f.trial_id == winner["trial_id"])
            unchanged = record.winner == winner["trial_id"] and record.model_uri
            record.model_uri = record.model_uri if unchanged else tracking.log_winner(
                track.uri, record.parent_run_id, winner["trial_id"], models[winner["model"]], best.test.metrics(),
                registered_name=f"{spec.space}-{spec.dataset}", input_example=_input_example(splits))
        tracking.retire_lost_runs(track.client, record.parent_run_id, {r["trial_id"] for r in rows})
        tracking.end_parent_run(track.uri, record.parent_run_id,
                                "FINISHED" if results.scored(rows) else "FAILED")
    except Exception as exc:  # noqa: BLE001 - any MLflow/network failure
        console.print(f"[yellow]MLflow at {track.uri} failed ({type(exc).__name__}); everything is in "
                      f"{spec.sweep_dir}: replay it with python -m tuner.sync {spec.sweep_dir}[/yellow]")


def mark_complete(folder: SweepFolder, record: SweepRecord, rows: list[dict],
                  finals: list[final.FamilyResult]) -> None:
    """Written last: a sweep killed before this resumes (and tests its picks) again."""
    winner = _winner(rows, finals)
    best = next((f for f in finals if winner and f.trial_id == winner["trial_id"]), None)
    folder.write_record(dataclasses.replace(record, completed=True, winner=winner["trial_id"] if winner else None,
                                            test=vars(best.test) if best else None))


def _winner(rows: list[dict], finals: list[final.FamilyResult]) -> dict[str, Any] | None:
    """The overall winner: the family pick with the best (mean) validation top-1; the test split plays no part."""
    if not finals:
        return None
    best = max(finals, key=lambda f: f.val_top1_mean)
    return next(r for r in rows if r["trial_id"] == best.trial_id)


def _input_example(splits: ImageSplits) -> np.ndarray:
    """Two validation images as float [0, 1]: what the registered model (with its preprocessing) takes."""
    return splits.val_x[:2].astype(np.float32) / 255.0
