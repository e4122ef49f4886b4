"""`python -m tuner.run --space NAME`: the command line. Parses, validates, runs, prints; one line on bad input."""

from __future__ import annotations

import argparse
import os
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
    p.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs per trial; 0.25 packs 4 trials per GPU")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once")
    p.add_argument("--address", help="join a running Ray cluster (auto, HOST:PORT, ray://HOST:PORT)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--storage", default="sweeps", help="folder (or URI) for sweep results (default ./sweeps)")
    p.add_argument("--name", help="sweep name (default: SPACE-DATASET-TIME)")
    p.add_argument("--seed", type=int, default=0, help="seed of the searcher and of the trials")
    p.add_argument("--resume", action="store_true", help="continue the sweep --storage/--name after a crash")
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

    if args.resume:
        if not args.name:
            raise UserError("--resume needs --name NAME (and the same --storage) of the sweep to continue")
        from pathlib import Path

        spec, record = read_spec(Path(args.storage).expanduser().resolve() / args.name)
        if args.space != spec.space:
            raise UserError(f"sweep '{spec.name}' was made with space '{spec.space}', not '{args.space}'")
        if record.get("completed"):
            test = record.get("test") or {}
            console.print(f"sweep {spec.name} is already complete (winner {record.get('winner')}, test top-1 "
                          f"{test.get('top1', float('nan')):.2f}); nothing to resume. Results: "
                          f"{spec.sweep_dir / 'trials.parquet'}")
            return 0
        outcome = run_sweep(spec, resume=True, console=console, parent_run_id=record["parent_run_id"])
    else:
        spec = build_spec(space=args.space, dataset=args.dataset, data_dir=args.data_dir,
                          num_samples=args.num_samples, max_epochs=args.max_epochs, sets=args.set,
                          gpus_per_trial=args.gpus_per_trial, cpus_per_trial=args.cpus_per_trial,
                          max_concurrent=args.max_concurrent, address=args.address, mlflow_uri=args.mlflow_uri,
                          storage=args.storage, name=args.name, seed=args.seed)
        if args.dry_run:
            from tuner.dryrun import dry_run

            dry_run(spec, console)
            return 0
        if spec.search_space.then is not None:
            from tuner.stages import run_stages

            outcomes = run_stages(spec, console, dataset_given=args.dataset is not None)
            for outcome in outcomes:
                print_summary(outcome, console)
            return max(outcome.exit_code for outcome in outcomes)
        outcome = run_sweep(spec, console=console)
    print_summary(outcome, console)
    return outcome.exit_code


def print_spaces(console: Console) -> None:
    from search_spaces import SPACES

    table = Table(title="search spaces", show_lines=False)
    for column in ("space", "data", "search", "trials", "epochs", "description"):
        table.add_column(column)
    for space in SPACES.values():
        table.add_row(space.name, space.dataset, space.search, str(space.num_samples), str(space.max_epochs),
                      space.description)
    console.print(table)


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
