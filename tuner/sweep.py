"""One sweep as a short list of named phases, each passing a value on to the next:

    check → reach MLflow → prepare data → (Ray cluster) size trials → open tracking → run the experiment
    → save tables → reseed → test once → publish → mark complete

`run_sweep` starts a sweep, resumes it (`resume`: its experiment is restored from Ray's state where there is
some) or grows a finished one (`add_trials`: one more Tune experiment whose searcher knows every earlier trial).
Nothing is written, and no run is created, until the checks pass; the sweep is marked complete last, so a sweep
killed at any point before resumes and finishes what it had not.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from rich.console import Console

from trainables.data import ImageSplits, load_dataset
from trainables.errors import UserError
from tuner.cli import Interrupted

log = logging.getLogger(__name__)
from tuner import cli, cluster, experiment, final, mlflow_view, registry, results, stopping, tracking
from tuner.dryrun import preflight_models
from tuner.front import front_rows, log_front, mark_front, test_front
from tuner.folder import COSTS_FILE, DRIVER_LOG, ROUND_DIR, TRIALS_FILE, Sweep, SweepFolder, SweepRecord, SweepState
from tuner.progress import LiveProgress
from tuner.reseed import group_reseeds, run_reseeds
from tuner.results import TrialStatus
from tuner.spec import SweepSpec, check_storage_writable, parse_target

LIVE = ("RUNNING", "PENDING", "PAUSED")  # Ray's statuses of a trial that has not ended


@dataclass
class Plan:
    """What the checks decided: the record to continue (None: a new sweep), and which experiment runs."""

    spec: SweepSpec
    folder: SweepFolder
    record: SweepRecord | None
    round_index: int = 0  # 0: the sweep's own experiment; k: the k-th --add-trials round (more-<k>/)
    add_trials: int = 0
    warm_points: list[dict[str, Any]] = field(default_factory=list)
    costs: Any = None  # a multi-objective sweep's tuner.costs.CostBook: every footprint's deployment costs


@dataclass
class Tracking:
    """The sweep's MLflow side once its parent run exists."""

    client: Any
    uri: str
    record: SweepRecord
    experiment_id: str
    tracker: tracking.MlflowTrials

    def callbacks(self, console: Console, total: int | None, role: str | None = None) -> list:
        """Fresh callbacks for one experiment: its trials mirrored to MLflow, and the live view."""
        spec = self.record.spec
        tracker = self.tracker if role is None else tracking.MlflowTrials(
            self.uri, self.experiment_id, self.record.parent_run_id, spec.max_epochs, tags={"sweep.role": role})
        space = spec.search_space
        scheduler = "ASHA" if space.asha is not None and role is None else None
        return [tracker, LiveProgress(console, space.metric, total, spec.max_epochs, scheduler, space.mode)]


def run_sweep(spec: SweepSpec, *, resume: bool = False, add_trials: int = 0, console: Console | None = None,
              extra_tags: dict[str, str] | None = None) -> Sweep:
    """Run, resume or grow the sweep `spec` names, and return its folder as read back at the end. A stop signal
    ends it as interrupted (Interrupted, after one line saying how to continue it)."""
    console = console or Console(highlight=False)
    plan = check(spec, resume=resume, add_trials=add_trials)
    cli.note_resume_command(resume_command(plan.spec))
    client = tracking.connect(plan.spec.mlflow_uri)  # before the data and Ray: an unreachable MLflow fails fast
    splits = prepare_data(plan.spec)
    shared = 0 if splits.cache is not None else splits.nbytes  # memory-mapped data do not enter the object store
    with cluster.connect(plan.spec.address, experiment.runtime_env(plan.spec), shared) as ray_cluster:
        stopping.take_signals()  # ray.init put its own SIGTERM handler in place
        if ray_cluster.reaped:
            console.print(f"[dim]stopped {ray_cluster.reaped} Ray process(es) a killed driver had left[/dim]")
        plan = dataclasses.replace(plan, spec=size_trials(plan.spec, splits, ray_cluster, console))
        plan = measure_costs(plan, splits, console)
        console.print(f"[bold]{plan.spec.name}[/bold]: space {plan.spec.space} on {splits.summary()}")
        plan = own_folder(plan)
        if plan.costs is not None:  # the sweep's own copy: --resume and --add-trials use the same figures
            from tuner.costs import cost_settings, save_json

            save_json(plan.folder.file(COSTS_FILE), {"settings": dataclasses.asdict(cost_settings(plan.spec)),
                                                     "costs": plan.costs.costs, "described": plan.costs.described})
        track = None
        try:
            track = open_tracking(plan, client, extra_tags or {})
            print_where_to_watch(ray_cluster, track, console)
            with cluster.ray_messages_to(plan.folder.file(DRIVER_LOG)):
                return _search_and_test(plan, track, splits, console)
        except BaseException as exc:  # a stop, a user mistake, a bug: the record and MLflow say so, then it goes on
            if track is not None:
                with stopping.shielded():
                    record_stop(plan, track, exc, console)
            raise


def _search_and_test(plan: Plan, track: Tracking, splits: ImageSplits, console: Console) -> Sweep:
    trainable = experiment.make_trainable(plan.spec, splits, plan.costs)
    earlier = plan.folder.read_trials() if plan.round_index else []
    stopper = stopping.SweepStopper(_budget_left(plan, track.record), _target(plan.spec),
                                    save=elapsed_saver(plan, track.record))
    try:
        grid, watch = run_experiment(plan, track, trainable, earlier, stopper, console)
    finally:  # an error inside fit too: record_stop then writes this run's time with the stop
        _add_elapsed(plan, track.record, stopper.elapsed_s())
    signum = stopping.received()
    statuses = watch.at_end if signum is not None else watch.at_begin  # see stopping.TuneSignals
    asked = plan.spec.memory_per_trial  # bytes once size_trials has measured it
    rows, cut_short = save_tables(plan.folder, grid, earlier, statuses, plan.spec.max_epochs, interrupted=signum,
                                  mark=lambda rows: mark_front(rows, plan.spec),
                                  asked_bytes=asked if isinstance(asked, (int, float)) else 0)
    if signum is not None:
        track.tracker.end_unfinished(cut_short, TrialStatus.INTERRUPTED, f"the sweep was stopped by "
                                     f"{signal.Signals(signum).name}; --resume continues it from its checkpoint")
        raise Interrupted(signum)
    if stopper.reason:
        track.record.stopped_by = stopper.reason
        track.tracker.end_unfinished(cut_short, TrialStatus.STOPPED, f"the sweep ended: {stopper.reason}")
        console.print(f"sweep ended early: {stopper.reason}; {len(cut_short)} running trial(s) stopped")
    reseeded, reseed_rows = reseed(plan, track, trainable, rows, console)
    console.print(f"testing each model's pick (by validation) once on the {len(splits.test_y)} test images")
    # the registered model is the most accurate feasible trial: families are picked among the feasible
    finals, models = final.evaluate_families([r for r in rows if r.get("feasible", True)], splits, plan.folder,
                                             reseeded)
    if plan.spec.multi_objective:
        console.print(f"testing the {len(front_rows(rows))} trial(s) of the Pareto front once")
        test_front(rows, splits, plan.folder)
    publish(plan, track, rows + reseed_rows, finals, models, splits, console)
    mark_complete(plan.folder, track.record, rows + reseed_rows, finals)
    return plan.folder.load()


def print_where_to_watch(ray_cluster: cluster.Cluster, track: Tracking, console: Console) -> None:
    """The Ray dashboard (and how to get its token), and MLflow's page of the sweep's runs, at the start."""
    if ray_cluster.dashboard_url:
        token = "; it asks for Ray's token: `ray get-auth-token` prints it" if ray_cluster.token_auth else ""
        console.print(f"Ray dashboard: {ray_cluster.dashboard_url}{token}", soft_wrap=True)
    command = tracking.ui_command(track.uri)
    page = mlflow_view.publish_runs_view(track.client, track.uri, track.experiment_id,  # opens on metric columns
                                         track.record.spec.searched_keys())
    console.print(f"MLflow runs: {page}" + (f" (after `{command}`)" if command else ""), soft_wrap=True)


def check(spec: SweepSpec, *, resume: bool, add_trials: int) -> Plan:
    """Every check that needs no data and no cluster; raises UserError before anything is written."""
    folder = SweepFolder(spec.sweep_dir)
    folder.check_unlocked()  # a driver at work on it is named now: before "already exists", the data and Ray
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


def own_folder(plan: Plan) -> Plan:
    """Take the sweep folder's lock before the first write, and look again: another driver may have made or
    moved the sweep on since the checks."""
    plan.folder.lock()
    if plan.record is None:
        if plan.folder.has_record():
            raise UserError(f"a sweep named '{plan.spec.name}' already exists in {plan.spec.storage}; pass --resume "
                            f"to continue it, --add-trials N to grow it, or choose another --name")
        return plan
    fresh = plan.folder.read_record()
    if plan.add_trials == 0 and fresh.completed:
        raise UserError(f"sweep '{plan.spec.name}' was completed meanwhile by another driver; nothing to resume")
    return dataclasses.replace(plan, record=dataclasses.replace(fresh, spec=plan.spec),
                               round_index=len(fresh.rounds) + (1 if plan.add_trials else 0))


def prepare_data(spec: SweepSpec) -> ImageSplits:
    """The data set, loaded once for every trial, and every model the space samples built against it."""
    splits = load_dataset(spec.dataset, spec.data_dir, image_size=spec.search_space.folder_image_size)
    preflight_models(spec, splits.num_classes, splits.image_size)
    return splits


def size_trials(spec: SweepSpec, splits: ImageSplits, ray_cluster: cluster.Cluster, console: Console) -> SweepSpec:
    """What one trial asks of the cluster (GPU share, CPUs, host memory), measured where asked (`auto`), checked to
    fit a node, and said in one line: how many trials run at once."""
    from tuner.packing import check_batch_sizes, resolve_gpus_per_trial, resolve_memory_per_trial

    check_batch_sizes(spec, len(splits.train_y))
    if spec.gpus_per_trial == "auto":
        spec = dataclasses.replace(spec, gpus_per_trial=resolve_gpus_per_trial(
            spec, splits.num_classes, splits.image_size, console))
    cluster.check_resources(ray_cluster, spec.gpus_per_trial, spec.cpus_per_trial)
    return dataclasses.replace(spec, memory_per_trial=resolve_memory_per_trial(
        spec, splits.num_classes, splits.image_size, len(splits.val_y), ray_cluster.resources(), console))


def measure_costs(plan: Plan, splits: ImageSplits, console: Console) -> Plan:
    """A multi-objective sweep's deployment costs per footprint, measured (or read back from the sweep's
    costs.json, or the cache) before any trial starts; a budget no footprint meets is one error line now."""
    if not plan.spec.multi_objective:
        return plan
    from tuner.costs import load_json, resolve_costs

    recorded = load_json(plan.folder.file(COSTS_FILE)) if plan.record is not None else None
    return dataclasses.replace(plan, costs=resolve_costs(plan.spec, splits.num_classes, splits.image_size, console,
                                                         recorded))


def open_tracking(plan: Plan, client, extra_tags: dict[str, str]) -> Tracking:
    """The sweep's record and its parent MLflow run. A new sweep's record is written first, then the parent run
    made (tagged with the record's uid, by which a resume finds it again): a sweep killed at any point from here
    resumes, and no parent run is made twice."""
    spec, uri = plan.spec, tracking.current_uri()
    record = plan.record
    if record is None:
        record = SweepRecord(spec, tracking_uri=uri, tags=dict(extra_tags))
        plan.folder.write_record(record)
    try:
        if record.parent_run_id is None:
            record = dataclasses.replace(record, parent_run_id=tracking.find_parent_run(client, spec.space,
                                                                                        record.uid)
                                         or _start_parent_run(spec, client, record))
        else:
            record = _parent_for_this_folder(plan, client, record)
        record = dataclasses.replace(record, spec=spec, state=SweepState.RUNNING, stopped_by=None)
        if plan.add_trials:
            record.rounds.append({"dir": ROUND_DIR.format(plan.round_index), "num_samples": plan.add_trials})
        plan.folder.write_record(record)
        experiment_id = client.get_run(record.parent_run_id).info.experiment_id
        tracker = tracking.MlflowTrials(uri, experiment_id, record.parent_run_id, spec.max_epochs,
                                        tags={"sweep.searched": ",".join(spec.searched_keys())})
        if plan.record is not None:
            tracker.reopen_parent(len(record.rounds))
        return Tracking(client, uri, record, experiment_id, tracker)
    except BaseException as exc:  # a stop or an error midway: no parent run left RUNNING, the record says so
        with stopping.shielded():
            _abandon_opening(plan, client, record, uri, exc)
        raise


def _abandon_opening(plan: Plan, client, record: SweepRecord, uri: str, exc: BaseException) -> None:
    """open_tracking stopped midway. Where sweep.json says running (this run wrote it, or a killed driver left
    it), it now says interrupted, and the parent run, if one was made (found by the record's uid when the stop
    came before its id was kept), is closed. Otherwise nothing was changed yet and nothing is."""
    try:
        on_disk = plan.folder.read_record()
    except UserError:
        return
    if on_disk.state != SweepState.RUNNING:  # e.g. a finished sweep grown by --add-trials, not reopened yet
        return
    parent = on_disk.parent_run_id or record.parent_run_id  # on disk: a copy's own parent run, once sync made it
    if parent is None:
        try:
            parent = tracking.find_parent_run(client, plan.spec.space, on_disk.uid)
        except Exception:  # noqa: BLE001 - MLflow is what failed: the record alone says interrupted
            parent = None
    close_record(plan.folder, dataclasses.replace(on_disk, spec=plan.spec, parent_run_id=parent), uri, exc,
                 end_run=True)


def _start_parent_run(spec: SweepSpec, client, record: SweepRecord) -> str:
    return tracking.start_parent_run(
        client, experiment=spec.space, run_name=spec.name,
        tags={"space": spec.space, "dataset": spec.dataset, "sweep_dir": str(spec.sweep_dir.resolve()),
              "sweep.uid": record.uid, **tracking.provenance_tags(), **record.tags,
              **({"warm_start": spec.warm_start} if spec.warm_start else {})},
        params={"num_samples": spec.num_samples, "max_epochs": spec.max_epochs, "search": spec.search_space.search,
                "seed": spec.seed, "reseed": spec.reseed, **spec.described_space(),
                **({"objectives": ",".join(spec.objectives), "constraints": " ".join(spec.constraints) or "none",
                    "cost_measurement": f"{spec.cost_runtime} on {spec.cost_device}, {spec.cost_threads} thread(s), "
                                        f"batch 1 and {spec.cost_batch}"} if spec.multi_objective else {})})


def _parent_for_this_folder(plan: Plan, client, record: SweepRecord) -> SweepRecord:
    """The parent run of a resumed or grown sweep, as the folder stands now: a moved folder keeps its parent run
    (whose sweep_dir tag follows it); a copy, while the original is still there, gets a parent run of its own,
    its trials replayed into it, so the two stay apart in MLflow."""
    try:
        parent = client.get_run(record.parent_run_id)
    except Exception:  # noqa: BLE001 - not on this server
        raise UserError(f"sweep '{plan.spec.name}': its MLflow parent run {record.parent_run_id} is not at "
                        f"{tracking.current_uri()} (a folder copied from another machine?); replay it there with "
                        f"python -m tuner.sync {plan.folder.path} --mlflow-uri {tracking.current_uri()}") from None
    here, recorded = str(plan.folder.path.resolve()), parent.data.tags.get("sweep_dir")
    if recorded in (None, here):
        return record
    original = SweepFolder(recorded)
    if original.has_record() and original.read_record().parent_run_id == record.parent_run_id:
        from tuner.sync import sync

        sync(plan.folder.path, tracking.current_uri(), own_parent=True)
        plan.folder.lock()
        fresh = plan.folder.read_record()
        console_line = f"{here} is a copy of {recorded}: it has a parent run of its own now ({fresh.parent_run_id})"
        log.warning(console_line)
        return dataclasses.replace(record, parent_run_id=fresh.parent_run_id)
    client.set_tag(record.parent_run_id, "sweep_dir", here)  # moved: the parent run follows the folder
    return record


def run_experiment(plan: Plan, track: Tracking, trainable, earlier: list[dict], stopper: stopping.SweepStopper,
                   console: Console):
    """The Tune experiment of this run: the sweep's own, or its latest --add-trials round; (ResultGrid, the
    trials' statuses when it ended)."""
    spec = plan.spec
    if plan.round_index:
        current = track.record.rounds[plan.round_index - 1]
        path, total = plan.folder.file(current["dir"]), current["num_samples"]
        searcher: Callable[[], Any] = lambda: experiment.grown_searcher(spec, earlier, plan.round_index)  # noqa: E731
    else:
        path, total = plan.folder.path, spec.num_samples
        searcher = lambda: experiment.make_searcher(spec, plan.warm_points)  # noqa: E731
    shown_total = None if spec.search_space.search == "grid" else total  # a grid's size is cells x samples
    callbacks = track.callbacks(console, shown_total)
    return experiment.fit(spec, path, trainable, callbacks, num_samples=total, searcher=searcher, stopper=stopper)


def save_tables(folder: SweepFolder, grid, earlier: list[dict], statuses: dict[str, str], max_epochs: int, *,
                interrupted: int | None, mark: Callable[[list[dict]], Any] | None = None,
                asked_bytes: float = 0) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """trials.parquet and epochs.parquet with this experiment's trials (safe on disk whatever happens next).
    Returns every row, and the rows of trials a stop cut short (running when the experiment ended): with a signal
    they are `interrupted` (--resume continues them); stopped by the sweep's budget or target, they stay `stopped`.
    Trials that never started are no rows."""
    new = results.trial_rows(grid, asked_bytes)  # an out-of-memory row says what its trial asked for
    cut_short = [r for r in new if statuses.get(r["trial_id"]) in LIVE and r["epochs"] < max_epochs
                 and r["status"] not in results.UNSUCCESSFUL]
    # a trial the stop caught before its first epoch is no row: pending, it never started; started, it has
    # nothing to show and, the sweep having ended, never will (an interrupted one continues on --resume)
    gone = {r["trial_id"] for r in cut_short if r["epochs"] == 0 and (
        interrupted is None or statuses.get(r["trial_id"]) == "PENDING")}
    new = [r for r in new if r["trial_id"] not in gone]
    cut_short = [r for r in cut_short if r["trial_id"] not in gone]
    if interrupted is not None:
        for row in cut_short:
            row["status"] = TrialStatus.INTERRUPTED.value
    rows = results.merge(earlier, new)
    if mark is not None:  # the Pareto front, over every round's trials
        mark(rows)
    folder.write_trials(rows)
    new_ids = {r["trial_id"] for r in new}
    epochs = [e for e in folder.read_epochs() if e["trial_id"] not in new_ids] if earlier else []
    folder.write_epochs(results.merge(epochs, results.epoch_rows(grid), key=lambda e: (e["trial_id"], e["epoch"])))
    return rows, cut_short


def reseed(plan: Plan, track: Tracking, trainable, rows: list[dict],
           console: Console) -> tuple[dict[str, list[dict]] | None, list[dict]]:
    """With --reseed: the top configs re-trained with new seeds, grouped by the trial they copy."""
    spec = plan.spec
    if not spec.reseed or not results.scored(rows):
        return None, []
    callbacks = track.callbacks(console, None, role="reseed")
    copies = run_reseeds(spec, plan.folder, rows, trainable, callbacks, plan.round_index, console)
    if stopping.received() is not None:
        raise Interrupted(stopping.received())
    return group_reseeds(rows, copies), copies


def publish(plan: Plan, track: Tracking, rows: list[dict], finals: list[final.FamilyResult], models: dict,
            splits: ImageSplits, console: Console) -> None:
    """Test figures and the winner into MLflow, every trial's run ending as its row says, the parent run closed.
    MLflow may have gone away mid-sweep: everything is safe on disk either way, and tuner.sync replays it."""
    spec, record = plan.spec, track.record
    winner = _winner(rows, finals)
    try:
        if not track.tracker.flush():
            raise ConnectionError("unreachable during the sweep")
        registry.log_finals(track.client, record.parent_run_id, finals, plan.folder.path)
        if winner is not None:
            best = next(f for f in finals if f.trial_id == winner["trial_id"])
            console.print(f"registering the winner, trial {winner['trial_id']}, as {spec.registered_name}")
            record.model_uri = registry.register_winner(
                track.uri, record.parent_run_id, winner, spec.searched_keys(), models[winner["model"]],
                best.test.metrics(), name=spec.registered_name, space=spec.space, dataset=spec.dataset,
                input_example=_input_example(splits), code_paths=experiment.user_code(spec))
        if spec.multi_objective:
            log_front(track.client, record.parent_run_id, rows)
        tracking.retire_lost_runs(track.client, record.parent_run_id, {r["trial_id"] for r in rows})
        tracking.reconcile_runs(track.client, record.parent_run_id, rows)
        tracking.end_parent_run(track.uri, record.parent_run_id, "FINISHED" if results.scored(rows) else "FAILED",
                                state=SweepState.COMPLETE.value, reason=record.stopped_by or "every trial ran")
    except Exception as exc:  # noqa: BLE001 - any MLflow/network failure
        console.print(f"[yellow]MLflow at {track.uri} failed ({type(exc).__name__}); everything is in "
                      f"{spec.sweep_dir}: replay it with python -m tuner.sync {spec.sweep_dir}[/yellow]")


def mark_complete(folder: SweepFolder, record: SweepRecord, rows: list[dict],
                  finals: list[final.FamilyResult]) -> None:
    """Written last: a sweep killed before this resumes (and tests its picks) again."""
    winner = _winner(rows, finals)
    best = next((f for f in finals if winner and f.trial_id == winner["trial_id"]), None)
    folder.write_record(dataclasses.replace(record, state=SweepState.COMPLETE,
                                            winner=winner["trial_id"] if winner else None,
                                            test=vars(best.test) if best else None))


def record_stop(plan: Plan, track: Tracking, exc: BaseException, console: Console) -> None:
    """The sweep did not complete: sweep.json says interrupted (by a signal or an error), the parent run is closed
    (KILLED for a stop, FAILED for an error), and one line says how to continue."""
    stopped = isinstance(exc, Interrupted)
    why = close_record(plan.folder, track.record, track.uri, exc, end_run=not track.tracker.offline).stopped_by
    if stopped:
        rows = plan.folder.read_trials() if plan.folder.file(TRIALS_FILE).is_file() else []
        counts = {s: sum(r["status"] == s for r in rows) for s in (TrialStatus.INTERRUPTED,)}
        ended = len(rows) - counts[TrialStatus.INTERRUPTED]
        console.print(f"interrupted by {why}: {ended} trial(s) ended, {counts[TrialStatus.INTERRUPTED]} "
                      f"interrupted (kept at their last checkpoint); continue with: {resume_command(plan.spec)}",
                      soft_wrap=True)
        exc.reported = True


def close_record(folder: SweepFolder, record: SweepRecord, uri: str, exc: BaseException, *,
                 end_run: bool) -> SweepRecord:
    """sweep.json says interrupted, by a signal or an error (`exc`), and the parent run, if any and `end_run`, is
    closed: KILLED for a stop, FAILED for an error. Returns the record as written."""
    stopped = isinstance(exc, Interrupted)
    why = str(exc) if stopped else f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    record = dataclasses.replace(record, state=SweepState.INTERRUPTED, stopped_by=why)
    try:
        folder.write_record(record)
    except OSError as write_error:  # e.g. the disk is full: the old record (state running) resumes as well
        log.warning("could not record the stop in %s (%s)", folder.path, write_error.strerror)
    try:
        if end_run and record.parent_run_id:
            tracking.end_parent_run(uri, record.parent_run_id, "KILLED" if stopped else "FAILED",
                                    state=SweepState.INTERRUPTED.value, reason=why)
    except Exception:  # noqa: BLE001 - MLflow gone too: tuner.sync replays the record later
        pass
    return record


def resume_command(spec: SweepSpec) -> str:
    return f"python -m tuner.run --space {spec.space} --resume --name {spec.name} --storage {spec.storage}"


def _budget_left(plan: Plan, record: SweepRecord) -> float | None:
    """--time-budget minus what this experiment has run already (before an interruption)."""
    if plan.spec.time_budget_s is None:
        return None
    spent = record.rounds[plan.round_index - 1].get("elapsed_s", 0.0) if plan.round_index else record.elapsed_s
    return max(0.0, plan.spec.time_budget_s - spent)


def elapsed_saver(plan: Plan, record: SweepRecord) -> Callable[[float], None]:
    """For the stopper to call now and then: sweep.json with this run's time so far added to a copy of `record`
    (which gets it once, at the end), so a driver killed mid-experiment (kill -9, a crash) leaves its time
    counted against --time-budget up to the last save."""
    def save(seconds: float) -> None:
        copy = dataclasses.replace(record, rounds=[dict(r) for r in record.rounds])
        _add_elapsed(plan, copy, seconds)
        plan.folder.write_record(copy)

    return save


def _add_elapsed(plan: Plan, record: SweepRecord, seconds: float) -> None:
    if plan.round_index:
        current = record.rounds[plan.round_index - 1]
        current["elapsed_s"] = current.get("elapsed_s", 0.0) + seconds
    else:
        record.elapsed_s += seconds


def _target(spec: SweepSpec) -> stopping.Target | None:
    return parse_target(spec.stop_at) if spec.stop_at else None


def _winner(rows: list[dict], finals: list[final.FamilyResult]) -> dict[str, Any] | None:
    """The overall winner: the family pick with the best (mean) validation top-1; the test split plays no part."""
    if not finals:
        return None
    best = max(finals, key=lambda f: f.val_top1_mean)
    return next(r for r in rows if r["trial_id"] == best.trial_id)


def _input_example(splits: ImageSplits) -> np.ndarray:
    """Two validation images as float [0, 1]: what the registered model (with its preprocessing) takes."""
    return splits.val_x[:2].astype(np.float32) / 255.0
