"""`python -m tuner.sync STORAGE/NAME`: replay a sweep's trials from Ray's storage into MLflow, adding only
what is missing (after an MLflow outage, or into another tracking server). Safe to run any number of times."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

from trainables.errors import UserError
from tuner import tracking
from tuner.final import FINAL_FILE, FamilyResult
from tuner.results import RESEEDS_FILE, TRIALS_FILE
from tuner.spec import read_spec, write_spec


def sync(sweep_dir: Path, mlflow_uri: str | None = None) -> dict[str, int]:
    """Make MLflow hold one child run per trial with every reported epoch; returns what was added."""
    import pyarrow.parquet as pq

    spec, record = read_spec(sweep_dir)
    uri = mlflow_uri or record.get("tracking_uri")
    client = tracking.connect(uri)
    parent_run_id = record["parent_run_id"]
    try:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - the parent is not on this server (another server, or a wiped store)
        parent_run_id = tracking.start_parent_run(client, experiment=spec.space, run_name=spec.name,
                                                  tags={"space": spec.space, "dataset": spec.dataset,
                                                        "sweep_dir": str(sweep_dir), "synced": "true"},
                                                  params={"num_samples": spec.num_samples,
                                                          "max_epochs": spec.max_epochs})
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        write_spec(spec, {**record, "parent_run_id": parent_run_id, "tracking_uri": tracking.current_uri()})
    statuses = {}
    for table in (TRIALS_FILE, RESEEDS_FILE):  # the searched trials, and --reseed's re-trained copies
        if (sweep_dir / table).exists():
            statuses.update({r["trial_id"]: r for r in pq.read_table(sweep_dir / table).to_pylist()})
    added = {"runs": 0, "epochs": 0, "closed": 0}
    # the first round's trials, then those of each --add-trials round (more-N/) and of --reseed (reseed*/)
    for trial_dir in sorted(sweep_dir.glob("trial_*")) + sorted(sweep_dir.glob("*/trial_*")):
        results = _results(trial_dir)
        if not results or (statuses and results[-1]["trial_id"] not in statuses):
            continue  # the Parquet tables, when written, are the list of the sweep's trials
        trial_id = results[-1]["trial_id"]
        had_run = tracking.trial_run_id(client, parent_run_id, trial_id) is not None
        config = json.loads((trial_dir / "params.json").read_text())
        tags = {"sweep.role": "reseed"} if trial_dir.parent.name.startswith("reseed") else None
        run_id = tracking.ensure_trial_run(client, experiment_id, parent_run_id, trial_id, config, tags)
        added["runs"] += not had_run
        logged = tracking.logged_epochs(client, run_id)
        for result in results:
            if int(result["epoch"]) not in logged:
                tracking.log_epoch(client, run_id, result)
                added["epochs"] += 1
        row = statuses.get(trial_id)
        if row is not None and client.get_run(run_id).info.status == "RUNNING":
            tracking.end_trial_run(client, run_id, row["status"], results[-1], row.get("error"))
            added["closed"] += 1
    if statuses:
        tracking.retire_lost_runs(client, parent_run_id, set(statuses))
    parent_metrics = client.get_run(parent_run_id).data.metrics
    if (sweep_dir / FINAL_FILE).exists():
        finals = [FamilyResult.from_row(r) for r in pq.read_table(sweep_dir / FINAL_FILE).to_pylist()]
        if any(f"test_top1.{f.family}" not in parent_metrics for f in finals):
            tracking.log_finals(client, parent_run_id, finals, sweep_dir)
    test = record.get("test")
    if test and "test_top1" not in parent_metrics:
        for key in ("top1", "top5", "loss"):
            client.log_metric(parent_run_id, f"test_{key}", test[key])
        if record.get("winner"):
            client.set_tag(parent_run_id, "winner_trial_id", record["winner"])
    if record.get("completed") and client.get_run(parent_run_id).info.status == "RUNNING":
        client.set_terminated(parent_run_id, "FINISHED")
        added["closed"] += 1
    return added


def _results(trial_dir: Path) -> list[dict]:
    """Ray Tune's per-report JSON lines, one per epoch (the last report of a re-run epoch wins)."""
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    by_epoch = {}
    for line in path.read_text().splitlines():
        if line.strip():
            result = json.loads(line)
            by_epoch[int(result["epoch"])] = result
    return [by_epoch[e] for e in sorted(by_epoch)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuner.sync", description=__doc__)
    parser.add_argument("sweep_dir", help="STORAGE/NAME of the sweep")
    parser.add_argument("--mlflow-uri", help="tracking URI (default: the one the sweep used)")
    args = parser.parse_args(argv)
    console = Console()
    try:
        added = sync(Path(args.sweep_dir).expanduser().resolve(), args.mlflow_uri)
    except UserError as exc:
        console.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        return 2
    console.print(f"synced {args.sweep_dir}: {added['runs']} run(s) created, {added['epochs']} epoch(s) of metrics "
                  f"added, {added['closed']} run(s) closed", highlight=False, soft_wrap=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
