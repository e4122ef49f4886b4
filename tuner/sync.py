"""`python -m tuner.sync STORAGE/NAME`: replay a sweep's trials from Ray's storage into MLflow, adding only
what is missing (after an MLflow outage, or into another tracking server). Safe to run any number of times."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tuner import cli, registry, tracking
from tuner.final import FamilyResult
from tuner.folder import RESEED_DIR, Sweep, SweepFolder


def sync(sweep_dir: Path, mlflow_uri: str | None = None, *, own_parent: bool = False) -> dict[str, int]:
    """Make MLflow hold one child run per trial with every reported epoch; returns what was added.
    `own_parent`: replay into a new parent run (a copied sweep folder, apart from the original's)."""
    folder = SweepFolder(sweep_dir)
    sweep = folder.load(need_trials=False)
    client = tracking.connect(mlflow_uri or sweep.record.tracking_uri)
    parent_run_id, experiment_id = _parent_run(sweep, client, own_parent)
    _record_where(sweep, parent_run_id)
    statuses = {r["trial_id"]: r for r in sweep.trials + sweep.reseeds}  # when written: the sweep's trials
    added = {"runs": 0, "epochs": 0, "closed": 0}
    # the first round's trials, then those of each --add-trials round (more-N/) and of --reseed (reseed*/)
    for trial_dir in sorted(folder.path.glob("trial_*")) + sorted(folder.path.glob("*/trial_*")):
        results = _results(trial_dir)
        if not results or (statuses and results[-1]["trial_id"] not in statuses):
            continue
        trial_id = results[-1]["trial_id"]
        had_run = tracking.trial_run_id(client, parent_run_id, trial_id) is not None
        config = json.loads((trial_dir / "params.json").read_text())
        tags = {"sweep.role": "reseed"} if trial_dir.parent.name.startswith(RESEED_DIR) else None
        run_id = tracking.ensure_trial_run(client, experiment_id, parent_run_id, trial_id, config, tags)
        added["runs"] += not had_run
        logged = tracking.logged_epochs(client, run_id)
        for result in results:
            if int(result["epoch"]) not in logged:
                tracking.log_epoch(client, run_id, result)
                added["epochs"] += 1
    if statuses:
        tracking.retire_lost_runs(client, parent_run_id, set(statuses))
        added["closed"] += tracking.reconcile_runs(client, parent_run_id, list(statuses.values()))
    added["closed"] += _sync_outcome(sweep, client, parent_run_id)
    return added


def _parent_run(sweep: Sweep, client, own_parent: bool) -> tuple[str, str]:
    """The sweep's parent run on this server; created when the server does not have it (_record_where records it)."""
    record, spec = sweep.record, sweep.spec
    try:
        if own_parent:
            raise LookupError("a parent run of its own")
        return record.parent_run_id, client.get_run(record.parent_run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - the parent is not on this server (another server, or a wiped store)
        parent_run_id = tracking.start_parent_run(
            client, experiment=spec.space, run_name=spec.name,
            tags={"space": spec.space, "dataset": spec.dataset, "sweep_dir": str(sweep.path.resolve()),
                  "synced": "true", "sweep.state": record.state.value},
            params={"num_samples": spec.num_samples, "max_epochs": spec.max_epochs})
        return parent_run_id, client.get_run(parent_run_id).info.experiment_id


def _record_where(sweep: Sweep, parent_run_id: str) -> None:
    """sweep.json names the store the sweep is now synced to, whenever its parent run or that store (as a store,
    not as spelled) differs from the recorded one: the same server under another URL, a moved mlflow.db. Else
    --resume there would be refused as tracked elsewhere."""
    record, uri = sweep.record, tracking.current_uri()
    moved = record.tracking_uri is None or store_key(uri) != store_key(record.tracking_uri)
    if moved or parent_run_id != record.parent_run_id:
        sweep.folder.write_record(dataclasses.replace(record, parent_run_id=parent_run_id,
                                                      tracking_uri=uri if moved else record.tracking_uri))


def store_key(uri: str) -> str:
    """One spelling per tracking store, to tell whether two URIs name the same one: SQLite and file-store paths
    absolute and resolved (sqlite:///mlflow.db is relative to the current folder, as MLflow reads it), http(s)
    with scheme and host in lower case, without a default port or a trailing slash."""
    uri = uri.strip()
    if match := re.match(r"sqlite:///(.+)$", uri):
        return f"sqlite:///{Path(match.group(1)).expanduser().resolve()}"
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        host = (parts.hostname or "").lower()
        port = parts.port if parts.port not in (None, {"http": 80, "https": 443}[parts.scheme]) else None
        netloc = (f"{parts.username}@" if parts.username else "") + host + (f":{port}" if port else "")
        return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, ""))
    if parts.scheme in ("", "file") and parts.path:  # a file store: ./mlruns, file:///x/mlruns
        return f"file://{Path(uri if parts.scheme == '' else parts.path).expanduser().resolve()}"
    return uri.rstrip("/")


def _sync_outcome(sweep: Sweep, client, parent_run_id: str) -> int:
    """The test figures and the winner on the parent run, and the parent closed once the sweep completed."""
    parent_metrics = client.get_run(parent_run_id).data.metrics
    finals = [FamilyResult.from_row(r) for r in sweep.final or []]
    if any(f"test_top1.{f.family}" not in parent_metrics for f in finals):
        registry.log_finals(client, parent_run_id, finals, sweep.path)
    test, winner = sweep.record.test, sweep.record.winner
    if test and "test_top1" not in parent_metrics:
        for key in ("top1", "top5", "loss"):
            client.log_metric(parent_run_id, f"test_{key}", test[key])
        if winner:
            client.set_tag(parent_run_id, "winner_trial_id", winner)
    if sweep.record.completed and client.get_run(parent_run_id).info.status == "RUNNING":
        client.set_terminated(parent_run_id, "FINISHED")
        return 1
    return 0


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


@cli.command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuner.sync", description=__doc__)
    parser.add_argument("sweep_dir", help="STORAGE/NAME of the sweep")
    parser.add_argument("--mlflow-uri", help="tracking URI (default: the one the sweep used)")
    args = parser.parse_args(argv)
    added = sync(Path(args.sweep_dir).expanduser().resolve(), args.mlflow_uri)
    cli.console().print(f"synced {args.sweep_dir}: {added['runs']} run(s) created, {added['epochs']} epoch(s) of "
                        f"metrics added, {added['closed']} run(s) closed", soft_wrap=True)
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.exit_with(main)
