"""`python -m tuner.run --space NAME`: the command line. Parse; then list the spaces, dry-run, or run, resume or
grow a sweep; print its summary and write its report."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from trainables.errors import UserError
from tuner import cli
from tuner.folder import RECORD_FILE, TRIALS_FILE, Sweep, SweepFolder
from tuner.results import COMPLETED, UNSUCCESSFUL
from tuner.spec import add_flags, build_spec, check_name, flag_values

EXIT_USER_ERROR = cli.EXIT_USER_ERROR  # kept for callers of tuner.run
_STARTED = [time.monotonic()]  # the command's start (main sets it): its wall time is printed at the end


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuner.run", description="Tune an image classifier: a named search "
                                "space, Optuna (TPE) + ASHA on Ray Tune, every trial tracked in MLflow.")
    add_flags(p)  # one flag per SweepSpec field (tuner.spec)
    p.add_argument("--resume", action="store_true", help="continue the sweep --storage/--name after a crash or a stop")
    p.add_argument("--resume-if-exists", action="store_true",
                   help="with --name: resume that sweep if it is there, else start it (for jobs a scheduler may "
                        "restart: a SLURM requeue, a Kubernetes retry)")
    p.add_argument("--add-trials", type=int, metavar="N",
                   help="grow the finished sweep --storage/--name by N trials; the searcher keeps its history")
    p.add_argument("--list-spaces", action="store_true", help="list the search spaces and exit")
    p.add_argument("--dry-run", action="store_true", help="build a few sampled configs and step each once on CPU")
    return p


@cli.command
def main(argv: list[str] | None = None) -> int:
    # argparse prints usage + message and exits 2 on a malformed flag: already one clear line, kept as is
    args = parser().parse_args(argv)
    _STARTED[0] = time.monotonic()
    from tuner.stopping import signals_handled

    with signals_handled():  # Ctrl-C / SIGTERM: a clean stop, recorded, exit 130 / 143
        return _main(args, cli.console())


def _main(args: argparse.Namespace, console: Console) -> int:
    if args.list_spaces:
        print_spaces(console)
        return cli.EXIT_OK
    if not args.space:
        raise UserError("name a search space with --space NAME (see --list-spaces)")
    if args.resume_if_exists:
        if not args.name:
            raise UserError("--resume-if-exists needs --name NAME: the sweep to resume, or to start under that name")
        check_name(args.name)
        args.resume = (Path(args.storage).expanduser().resolve() / args.name / RECORD_FILE).is_file()
    if args.resume or args.add_trials is not None:
        return _continue(args, console)
    spec = build_spec(**flag_values(args), dry_run=args.dry_run)
    if args.dry_run:
        from tuner.dryrun import dry_run

        dry_run(spec, console)
        return cli.EXIT_OK
    if spec.search_space.then is not None:
        from tuner.stages import run_stages

        return _finish(run_stages(spec, console), console)
    from tuner.sweep import run_sweep

    return _finish([run_sweep(spec, console=console)], console)


def _continue(args: argparse.Namespace, console: Console) -> int:
    """--resume or --add-trials N on the sweep --storage/--name."""
    flag = "--resume" if args.resume else "--add-trials"
    if args.resume and args.add_trials is not None:
        raise UserError("--resume and --add-trials go one at a time: resume the sweep first, then grow it")
    if args.add_trials is not None and args.add_trials < 1:
        raise UserError(f"--add-trials must be a positive integer, got {args.add_trials}")
    if not args.name:
        raise UserError(f"{flag} needs --name NAME (and the same --storage) of the sweep")
    check_name(args.name)
    folder = SweepFolder(Path(args.storage).expanduser().resolve() / args.name)
    if not folder.has_record():
        what = "to resume" if args.resume else "to grow"
        raise UserError(f"no sweep {what} at {folder.path}; check --storage and --name"
                        + (" (or drop --resume)" if args.resume else ""))
    record = folder.read_record()
    spec = _with_this_run(record, args)
    _same_space(spec, args.space, console)
    two_stage = spec.search_space.then is not None
    if args.add_trials is not None and not record.completed:
        raise UserError(f"sweep '{spec.name}' is not finished; continue it with --resume first")
    if args.resume and record.completed and not (two_stage and _stages_pending(folder)):
        test = record.test or {}
        console.print(f"sweep {spec.name} is already complete (winner {record.winner}, test top-1 "
                      f"{test.get('top1', math.nan):.2f}); nothing to resume. Results: {folder.file(TRIALS_FILE)}")
        return cli.EXIT_OK
    add = args.add_trials or 0
    if two_stage:
        from tuner.stages import run_stages

        return _finish(run_stages(spec, console, resume=args.resume, add_trials=add), console)
    from tuner.sweep import run_sweep

    return _finish([run_sweep(spec, resume=args.resume, add_trials=add, console=console)], console)


def _same_space(spec, given: str, console: Console) -> None:
    """--space of a --resume / --add-trials names the sweep's space (or its file); a file that changed since the
    sweep started is said, and the recorded space runs."""
    from tuner.space_files import is_space_path, load_space_file, space_digest

    if is_space_path(given) and not Path(given).expanduser().is_file():  # sweep.json holds the whole space
        console.print(f"[dim]{given} is gone; sweep '{spec.name}' goes on with the space recorded in its sweep.json "
                      f"('{spec.space}')[/dim]", soft_wrap=True)
        return
    name = load_space_file(given).name if is_space_path(given) else given
    if name != spec.space:
        raise UserError(f"sweep '{spec.name}' was made with space '{spec.space}', not '{name}'")
    if is_space_path(given) and space_digest(load_space_file(given)) != space_digest(spec.search_space):
        console.print(f"[yellow]{given} has changed since sweep '{spec.name}' started; it goes on with the space "
                      f"it started with (recorded in its sweep.json)[/yellow]", soft_wrap=True)


def _with_this_run(record, args: argparse.Namespace):
    """What may change between runs of one sweep, given with --resume or --add-trials, replaces the recorded
    value: where it runs (--address: a new cluster after a requeue), where the data is (--data-dir), and its
    ends (--time-budget, --stop-at). The rest of the spec is the sweep's own; its MLflow is the one it used."""
    import dataclasses

    from tuner.spec import parse_duration, parse_target

    spec = record.spec
    if args.mlflow_uri and record.tracking_uri and not same_store(args.mlflow_uri, record.tracking_uri):
        raise UserError(f"sweep '{spec.name}' is tracked in MLflow at {record.tracking_uri}, not {args.mlflow_uri}; "
                        f"to continue it there, first replay it: python -m tuner.sync {spec.sweep_dir} "
                        f"--mlflow-uri {args.mlflow_uri}")
    spec = dataclasses.replace(spec, mlflow_uri=record.tracking_uri or spec.mlflow_uri)
    if args.address is not None:
        spec = dataclasses.replace(spec, address=args.address)
    if args.data_dir is not None:
        spec = dataclasses.replace(spec, data_dir=str(Path(args.data_dir).expanduser().resolve()))
    if args.time_budget is not None:
        spec = dataclasses.replace(spec, time_budget_s=parse_duration(args.time_budget))
    if args.stop_at is not None:
        parse_target(args.stop_at)
        spec = dataclasses.replace(spec, stop_at=args.stop_at)
    return spec


def same_store(given: str, recorded: str) -> bool:
    """--mlflow-uri names the recorded store however it is spelled: sqlite:///mlflow.db for the absolute path the
    record holds (a SLURM requeue passes the relative one again), a server with or without a trailing slash."""
    from tuner.sync import store_key  # MLflow and torch come with it: only when a sweep is continued

    return store_key(given) == store_key(recorded)


def _stages_pending(folder: SweepFolder) -> bool:
    from tuner.stages import pending_stages

    return bool(pending_stages(folder.load()))


def _finish(sweeps: list[Sweep], console: Console) -> int:
    """One summary (a two-stage space's: stage 1's, then each family's two stages side by side), the reports."""
    first = sweeps[0]
    print_summary(first, console)
    if len(sweeps) > 1:
        print_stages(first.folder.load(), console)
    for sweep in reversed(sweeps):  # stage 1's report last: it covers the stage-2 sweeps too
        write_report(sweep, console, show=sweep is first)
    console.print(f"wall time:    {_duration(time.monotonic() - _STARTED[0])}")
    return max(exit_code(sweep) for sweep in sweeps)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{secs} s"


def exit_code(sweep: Sweep) -> int:
    """0 when at least one trial completed (its figures count), else 1."""
    return cli.EXIT_OK if any(r["status"] in COMPLETED for r in sweep.trials) else cli.EXIT_FAILED


def print_stages(first: Sweep, console: Console) -> None:
    rows = first.stages_summary()
    table = Table(title="each model family: stage 1 (its best, tested once), then stage 2 from it")
    for column in ("family", "stage 1 trial", "val top-1", "test top-1", "stage 2 trial", "val top-1 ",
                   "test top-1 ", "registered model"):
        table.add_column(column, justify="left" if column in ("family", "registered model") else "right")
    for r in rows:
        table.add_row(r["family"], str(r["stage1_trial"]), _pct(r["stage1_val"]), _pct(r["stage1_test"]),
                      str(r["stage2_trial"]), _pct(r["stage2_val"]), _pct(r["stage2_test"]), str(r["model_uri"]))
    console.print(table)


def _pct(value) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"


def write_report(sweep: Sweep, console: Console, show: bool = True) -> None:
    """The sweep's report, written and attached to its parent run; a report problem never fails the sweep."""
    try:
        from tuner.report import REPORT_DIR, attach, build_report

        report = build_report(sweep)
        warning = attach(sweep, [f.file for f in report.figures] + [report.html, report.markdown], REPORT_DIR)
    except Exception as exc:  # noqa: BLE001 - the results are safe; the report can be made again later
        console.print(f"[yellow]report not written ({type(exc).__name__}: {str(exc)[:200]}); make it with "
                      f"python -m tuner.report {sweep.path}[/yellow]")
        return
    if show:
        console.print(f"report:       {report.html}" + (f" (not attached to MLflow: {warning})" if warning else ""),
                      soft_wrap=True)


def print_spaces(console: Console, folder: str = "spaces") -> None:
    """The built-in spaces, then the space files found in ./spaces/ (each by its path)."""
    from search_spaces import SPACES
    from tuner.space_files import find_space_files, load_space_file

    spaces, broken = [(space, space.name) for space in SPACES.values()], []
    for path in find_space_files(folder):
        try:
            spaces.append((load_space_file(path), str(path)))
        except UserError as exc:
            broken.append(str(exc))
    wide = console.width >= 120  # else the descriptions follow the table, so no column is squeezed to a sliver
    table = Table(title="search spaces")
    for column in ("space", "data", "search", "trials", "epochs") + (("description",) if wide else ()):
        table.add_column(column, no_wrap=column != "description")
    for space, label in spaces:
        cells = math.prod(len(v["grid_search"]) for v in space.params.values()
                          if isinstance(v, dict) and "grid_search" in v)  # Ray runs num_samples of every grid cell
        trials = str(space.num_samples * cells)
        if cells > 1 and space.num_samples > 1:
            trials = f"{space.num_samples} x {cells}"
        data = space.dataset + (f"→{space.then.dataset}" if space.then else "")  # a second stage on other data
        table.add_row(label, data, space.search, trials,
                      str(space.max_epochs), *((space.description,) if wide else ()))
    console.print(table)
    if not wide:
        for space, label in spaces:
            console.print(f"[bold]{label}[/bold]: {space.description}")
    files = len(spaces) - len(SPACES)
    console.print(f"space files in ./{folder}/: {files} listed by their path (--space PATH runs one)"
                  if files or broken else f"no space files in ./{folder}/ (--space PATH runs a YAML, TOML or .py "
                                          f"space file from anywhere)")
    for line in broken:
        console.print(f"[yellow]not listed: {line}[/yellow]", soft_wrap=True)


def print_summary(sweep: Sweep, console: Console, top: int = 5) -> None:
    rows = sorted(sweep.trials, key=lambda r: -(r["best_val_top1"] if r["best_val_top1"] == r["best_val_top1"]
                                                else -1))
    searched = sweep.spec.searched_keys()
    table = Table(title=f"top {min(top, len(rows))} of {len(rows)} trials (by validation top-1)")
    for column in ("trial", "status", "epochs", "val top-1", "wall s"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("searched params")
    for row in rows[:top]:
        table.add_row(row["trial_id"], row["status"], str(row["epochs"]), f"{row['best_val_top1']:.2f}",
                      f"{row['wall_s']:.0f}", " ".join(f"{k}={_short(row.get(k))}" for k in searched))
    console.print(table)
    from tuner.front import print_front

    print_front(sweep, console)  # a multi-objective sweep's Pareto front
    finals = sweep.final or []
    if len(finals) > 1 or any(f["seeds"] > 1 for f in finals):
        tested = Table(title="tested once: each model's pick by validation")
        for column in ("model", "trial", "seeds", "val top-1", "test top-1", "test top-5"):
            tested.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)
        for f in finals:
            spread = (lambda mean, std: f"{mean:.2f} ± {std:.2f}") if f["seeds"] > 1 else \
                (lambda mean, std: f"{mean:.2f}")
            tested.add_row(f["family"], f["trial_id"], str(f["seeds"]), spread(f["val_top1_mean"], f["val_top1_std"]),
                           spread(f["test_top1_mean"], f["test_top1_std"]), f"{f['test_top5']:.2f}")
        console.print(tested)
    record = sweep.record
    winner = sweep.trial(record.winner) if record.winner else None
    if winner is not None and record.test:
        console.print(f"winner {winner['trial_id']}: val top-1 {winner['best_val_top1']:.2f}, "
                      f"test top-1 {record.test['top1']:.2f} / top-5 {record.test['top5']:.2f} "
                      f"({record.test['images']} test images, evaluated once)")
    if record.model_uri:
        console.print(f"registered model: {sweep.spec.space}-{sweep.spec.dataset} ({record.model_uri})")
    for status in UNSUCCESSFUL:
        failed = [r for r in sweep.trials if r["status"] == status]
        if failed:
            console.print(f"[yellow]{len(failed)} trial(s) {status}[/yellow] "
                          f"({', '.join(r['trial_id'] for r in failed)}): {failed[0]['error']}")
    console.print(f"trials table: {sweep.folder.file(TRIALS_FILE)}")
    if record.tracking_uri:
        console.print(f"MLflow UI:    {_mlflow_where(record)}", soft_wrap=True)


def _mlflow_where(record) -> str:
    import mlflow

    from tuner import mlflow_view, tracking

    command = tracking.ui_command(record.tracking_uri)
    experiment = _experiment_id(record)
    page = (mlflow_view.publish_runs_view(mlflow.MlflowClient(record.tracking_uri), record.tracking_uri, experiment,
                                          record.spec.searched_keys()) if experiment else record.tracking_uri)
    return f"{command}, then {page}" if command else page


def _experiment_id(record) -> str | None:
    try:
        import mlflow

        return mlflow.MlflowClient(record.tracking_uri).get_run(record.parent_run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - MLflow gone: the command alone
        return None


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


if __name__ == "__main__":
    cli.exit_with(main)
