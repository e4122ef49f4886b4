"""`python -m tuner.run --space NAME`: the command line. Parses, validates, runs, prints; one line on bad input."""

from __future__ import annotations

import argparse
import math
import sys

from rich.console import Console
from rich.table import Table

from trainables.errors import UserError

EXIT_USER_ERROR = 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuner.run", description="Tune an image classifier: a named search "
                                "space, Optuna (TPE) + ASHA on Ray Tune, every trial tracked in MLflow.")
    p.add_argument("--space", help="search space name (see --list-spaces)")
    p.add_argument("--dataset", help="cifar10 | cifar100 | digits | folder (default: the space's)")
    p.add_argument("--data-dir", help="folder holding the data set (CIFAR files, or an image folder)")
    p.add_argument("--num-samples", type=int, help="number of trials (default: the space's)")
    p.add_argument("--max-epochs", type=int, help="epochs per trial, the ASHA budget (default: the space's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="pin a trial-config key, e.g. --set lr=3e-3 (repeatable)")
    p.add_argument("--gpus-per-trial", default="0", metavar="F|auto",
                   help="GPUs per trial; 0.25 packs 4 trials per GPU; auto measures a training step and packs "
                        "as many as fit")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    p.add_argument("--address", help="join a running Ray cluster (auto, HOST:PORT, ray://HOST:PORT)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--storage", default="sweeps", help="folder for sweep results, shared by every node on a cluster (default ./sweeps)")
    p.add_argument("--name", help="sweep name (default: SPACE-DATASET-TIME)")
    p.add_argument("--seed", type=int, default=0, help="seed of the searcher and of the trials")
    p.add_argument("--resume", action="store_true", help="continue the sweep --storage/--name after a crash")
    p.add_argument("--add-trials", type=int, metavar="N",
                   help="grow the finished sweep --storage/--name by N trials; the searcher keeps its history")
    p.add_argument("--warm-start", metavar="SWEEP_DIR",
                   help="run the best configs of an earlier sweep (its STORAGE/NAME folder) first")
    p.add_argument("--reseed", type=int, default=0, metavar="K",
                   help="re-train each model's top configs with K new seeds; pick and report mean ± std")
    p.add_argument("--reseed-top", type=int, default=3, metavar="N", help="configs per model to re-train (3)")
    p.add_argument("--list-spaces", action="store_true", help="list the search spaces and exit")
    p.add_argument("--dry-run", action="store_true", help="build a few sampled configs and step each once on CPU")
    return p




def main(argv: list[str] | None = None) -> int:
    console = Console()
    args = _parse(argv)
    try:
        if args.list_spaces:
            print_spaces(console)
            return 0
        if not args.space:
            raise UserError("name a search space with --space NAME (see --list-spaces)")
        return _run(args, console)
    except UserError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        console.print("interrupted: finished trials are kept; continue with --resume --name NAME")
        return 130


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    # argparse prints usage + message and exits 2 on a malformed flag: already one clear line, kept as is.
    return p.parse_args(argv)


def _run(args: argparse.Namespace, console: Console) -> int:
    from tuner.spec import build_spec, read_spec
    from tuner.sweep import run_sweep

    if args.resume or args.add_trials is not None:
        flag = "--resume" if args.resume else "--add-trials"
        if args.resume and args.add_trials is not None:
            raise UserError("--resume and --add-trials go one at a time: resume the sweep first, then grow it")
        if args.add_trials is not None and args.add_trials < 1:
            raise UserError(f"--add-trials must be a positive integer, got {args.add_trials}")
        if not args.name:
            raise UserError(f"{flag} needs --name NAME (and the same --storage) of the sweep")
        from pathlib import Path

        spec, record = read_spec(Path(args.storage).expanduser().resolve() / args.name)
        if args.space != spec.space:
            raise UserError(f"sweep '{spec.name}' was made with space '{spec.space}', not '{args.space}'")
        if args.add_trials is not None:
            if not record.get("completed"):
                raise UserError(f"sweep '{spec.name}' is not finished; continue it with --resume first")
            outcome = run_sweep(spec, add_trials=args.add_trials, console=console)
            print_summary(outcome, console)
            write_report(outcome, console)
            return outcome.exit_code
        if record.get("completed"):
            test = record.get("test") or {}
            console.print(f"sweep {spec.name} is already complete (winner {record.get('winner')}, test top-1 "
                          f"{test.get('top1', float('nan')):.2f}); nothing to resume. Results: "
                          f"{spec.sweep_dir / 'trials.parquet'}")
            return 0
        outcome = run_sweep(spec, resume=True, console=console)
    else:
        spec = build_spec(space=args.space, dataset=args.dataset, data_dir=args.data_dir,
                          num_samples=args.num_samples, max_epochs=args.max_epochs, sets=args.set,
                          gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
                          max_concurrent=args.max_concurrent, address=args.address, mlflow_uri=args.mlflow_uri,
                          storage=args.storage, name=args.name, seed=args.seed, reseed=args.reseed,
                          reseed_top=args.reseed_top, warm_start=args.warm_start)
        if args.dry_run:
            from tuner.dryrun import dry_run

            dry_run(spec, console)
            return 0
        if spec.search_space.then is not None:
            from tuner.stages import run_stages

            outcomes = run_stages(spec, console, dataset_given=args.dataset is not None)
            for outcome in outcomes:
                print_summary(outcome, console)
                write_report(outcome, console)
            return max(outcome.exit_code for outcome in outcomes)
        outcome = run_sweep(spec, console=console)
    print_summary(outcome, console)
    write_report(outcome, console)
    return outcome.exit_code


def write_report(outcome, console: Console) -> None:
    """The sweep's report, written and attached to its parent run; a report problem never fails the sweep."""
    from tuner.report import REPORT_DIR, attach, build_report, load_sweep

    try:
        sweep = load_sweep(outcome.spec.sweep_dir)
        report = build_report(sweep)
        warning = attach(sweep, [f.file for f in report.figures] + [report.html, report.markdown], REPORT_DIR)
    except Exception as exc:  # noqa: BLE001 - the results are safe; the report can be made again later
        console.print(f"[yellow]report not written ({type(exc).__name__}: {str(exc)[:200]}); make it with "
                      f"python -m tuner.report {outcome.spec.sweep_dir}[/yellow]", highlight=False)
        return
    console.print(f"report:       {report.html}" + (f" (not attached to MLflow: {warning})" if warning else ""),
                  highlight=False, soft_wrap=True)


def print_spaces(console: Console) -> None:
    from search_spaces import SPACES

    wide = console.width >= 120  # else the descriptions follow the table, so no column is squeezed to a sliver
    table = Table(title="search spaces")
    for column in ("space", "data", "search", "trials", "epochs") + (("description",) if wide else ()):
        table.add_column(column, no_wrap=column != "description")
    for space in SPACES.values():
        cells = math.prod(len(v["grid_search"]) for v in space.params.values()
                          if isinstance(v, dict) and "grid_search" in v)  # Ray runs num_samples of every grid cell
        trials = str(space.num_samples * cells)
        if cells > 1 and space.num_samples > 1:
            trials = f"{space.num_samples} x {cells}"
        data = space.dataset + (f"→{space.then.dataset}" if space.then else "")  # a second stage on other data
        table.add_row(space.name, data, space.search, trials,
                      str(space.max_epochs), *((space.description,) if wide else ()))
    console.print(table)
    if not wide:
        for space in SPACES.values():
            console.print(f"[bold]{space.name}[/bold]: {space.description}", highlight=False)


def print_summary(outcome, console: Console, top: int = 5) -> None:
    rows = sorted(outcome.rows, key=lambda r: -(r["best_val_top1"] if r["best_val_top1"] == r["best_val_top1"]
                                                 else -1))
    searched = outcome.spec.searched_keys()
    table = Table(title=f"top {min(top, len(rows))} of {len(rows)} trials (by validation top-1)")
    for column in ("trial", "status", "epochs", "val top-1", "wall s"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("searched params")
    for row in rows[:top]:
        table.add_row(row["trial_id"], row["status"], str(row["epochs"]), f"{row['best_val_top1']:.2f}",
                      f"{row['wall_s']:.0f}", " ".join(f"{k}={_short(row.get(k))}" for k in searched))
    console.print(table)
    if len(outcome.finals) > 1 or any(f.seeds > 1 for f in outcome.finals):
        tested = Table(title="tested once: each model's pick by validation")
        for column in ("model", "trial", "seeds", "val top-1", "test top-1", "test top-5"):
            tested.add_column(column, justify="left" if column == "model" else "right", no_wrap=True)
        for f in outcome.finals:
            spread = lambda mean, std: f"{mean:.2f} ± {std:.2f}" if f.seeds > 1 else f"{mean:.2f}"  # noqa: E731
            tested.add_row(f.family, f.trial_id, str(f.seeds), spread(f.val_top1_mean, f.val_top1_std),
                           spread(f.test_top1_mean, f.test_top1_std), f"{f.test.top5:.2f}")
        console.print(tested)
    if outcome.test is not None:
        console.print(f"winner {outcome.winner['trial_id']}: val top-1 {outcome.winner['best_val_top1']:.2f}, "
                      f"test top-1 {outcome.test.top1:.2f} / top-5 {outcome.test.top5:.2f} "
                      f"({outcome.test.images} test images, evaluated once)")
    if outcome.model_uri:
        console.print(f"registered model: {outcome.spec.space}-{outcome.spec.dataset} ({outcome.model_uri})")
    for kind, failed in sorted(outcome.failures.items()):
        console.print(f"[yellow]{len(failed)} trial(s) {kind}[/yellow] ({', '.join(r['trial_id'] for r in failed)}): "
                      f"{failed[0]['error']}", highlight=False)
    console.print(f"trials table: {outcome.parquet}")
    console.print(f"MLflow UI:    mlflow ui --backend-store-uri {outcome.tracking_uri}")


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
