"""Two-stage spaces: stage 1 as a sweep, then per model family a stage-2 sweep from that family's best checkpoint.

The stage-1 sweep's record lists its stage-2 sweeps (family -> sweep name and the stage-1 trial it starts from),
written before each starts, so `--resume` finishes the stage-2 sweeps a kill interrupted and starts those that
never began, and `--add-trials` (which may change a family's best trial) starts a new stage-2 sweep only for a
family whose best changed.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from trainables.classify import CHECKPOINT_FILE
from trainables.config import ARCHITECTURE, TrialConfig
from tuner import cluster, experiment
from tuner.final import best_per_family
from tuner.folder import Sweep, SweepFolder, slug
from tuner.spec import SweepSpec, validate_trial_configs
from tuner.sweep import run_sweep

CARRIED = ("max_epochs", "seed")  # --set keys of stage 1 that stage 2 keeps
NAME_MAX = 128  # the longest sweep name --name takes (tuner.spec.NAME_PATTERN): stage-2 names are --resume'd by it


def run_stages(spec: SweepSpec, console: Console, *, resume: bool = False, add_trials: int = 0) -> list[Sweep]:
    """Stage 1, then each family's stage 2, on one Ray instance; every stage's sweep as read back at its end."""
    with cluster.connect(spec.address, experiment.runtime_env(spec)):
        first = _stage_one(spec, console, resume=resume, add_trials=add_trials)
        outcomes = [first]
        for family, (row,) in best_per_family(first.trials).items():
            outcomes.append(_stage_two(first, plan_stage_two(first, family, row), console))
            first = first.folder.load()  # its record now lists this family's stage 2
        return outcomes


class Step(str, enum.Enum):
    """What a family's stage 2 needs next."""

    DONE = "done"  # its sweep, from the family's best stage-1 trial, ran to its end: read back
    RESUME = "resume"  # its sweep started and was cut short: --resume it
    START = "start"  # never started, or stage 1's best for the family changed (--add-trials): start it


@dataclass(frozen=True)
class StageTwo:
    """A family's stage-2 sweep: its name, what it needs next, and the stage-1 trial it starts from."""

    family: str
    row: dict[str, Any]
    name: str
    step: Step
    recorded: bool  # stage 1's record lists it already (a START recorded before a kill keeps its name)


def plan_stage_two(first: Sweep, family: str, row: dict[str, Any]) -> StageTwo:
    """Decide from the folders alone: a recorded stage 2 from this very trial (or from one `row` only ties) is read
    back or resumed, or started under its recorded name; a family that is new, or whose best trial is now beaten,
    gets a new sweep name."""
    entry = first.record.stage2.get(family)
    if entry and entry["from_trial"] != row["trial_id"]:
        kept = first.trial(entry["from_trial"])
        if kept is not None and kept.get("model") == family and kept["best_val_top1"] >= row["best_val_top1"]:
            row = kept  # a grown stage 1 that only ties the family's best (trial ids break ties) changes nothing
    if not (entry and entry["from_trial"] == row["trial_id"]):
        return StageTwo(family, row, stage2_name(first.path.parent, first.name, family), Step.START, recorded=False)
    folder = SweepFolder(first.path.parent / entry["name"])
    if not folder.has_record():  # recorded, then killed before its own record was written
        return StageTwo(family, row, entry["name"], Step.START, recorded=True)
    step = Step.DONE if folder.read_record().completed else Step.RESUME
    return StageTwo(family, row, entry["name"], step, recorded=True)


def plan_stages(first: Sweep) -> list[StageTwo]:
    """Every family's stage 2 of the finished stage 1 `first`, in family order."""
    return [plan_stage_two(first, family, row) for family, (row,) in best_per_family(first.trials).items()]


def pending_stages(first: Sweep) -> list[str]:
    """The families of a finished stage 1 whose stage-2 sweep has not run to its end (or not started)."""
    return [stage.family for stage in plan_stages(first) if stage.step != Step.DONE]


def stage2_spec(spec: SweepSpec, name: str, row: dict[str, Any]) -> SweepSpec:
    """The stage-2 sweep of the family of stage-1 trial `row`: the stage-2 space, that trial's architecture and
    weights, and none of stage 1's warm start or reseeding (they were about stage 1's search)."""
    stage2 = spec.search_space.then
    carried = {k: row[k] for k in TrialConfig.tagged(ARCHITECTURE) if row.get(k) is not None}
    dataset = spec.then_dataset or stage2.dataset
    content = (spec.space_content or {}).get("then")  # stage 2 as recorded with stage 1, when it was
    next_spec = dataclasses.replace(
        spec, space=stage2.name, name=name, dataset=dataset, then_dataset=None, space_content=content,
        model_name=f"{spec.space}-{slug(str(row['model']))}-{dataset}",  # one registered model per family
        max_epochs=spec.overrides.get("max_epochs", stage2.max_epochs), warm_start=None, reseed=0,
        overrides={**carried, **{k: v for k, v in spec.overrides.items() if k in CARRIED},
                   "pretrained": str(Path(row["checkpoint"]) / CHECKPOINT_FILE)})
    validate_trial_configs(next_spec)
    return next_spec


def _stage_one(spec: SweepSpec, console: Console, *, resume: bool, add_trials: int) -> Sweep:
    folder = SweepFolder(spec.sweep_dir)
    if resume and folder.read_record().completed:
        return folder.load()  # stage 1 is done: only stage-2 sweeps may be left
    return run_sweep(spec, resume=resume, add_trials=add_trials, console=console)


def _stage_two(first: Sweep, stage: StageTwo, console: Console) -> Sweep:
    """Finish, start or reuse the family's stage-2 sweep (recorded in stage 1's record before it starts)."""
    if stage.step == Step.DONE:
        return SweepFolder(first.path.parent / stage.name).load()
    if stage.step == Step.RESUME:
        console.print(f"[bold]stage 2[/bold] for {stage.family}: resuming {stage.name}")
        return run_sweep(SweepFolder(first.path.parent / stage.name).read_record().spec, resume=True, console=console)
    if not stage.recorded:
        stages = {**first.record.stage2, stage.family: {"name": stage.name, "from_trial": stage.row["trial_id"]}}
        first.folder.write_record(dataclasses.replace(first.record, stage2=stages))
    row = stage.row
    spec = stage2_spec(first.spec, stage.name, row)
    console.print(f"[bold]stage 2[/bold] for {stage.family}: from trial {row['trial_id']} "
                  f"(val top-1 {row['best_val_top1']:.2f}), {spec.overrides['pretrained']}")
    tags = {"stage1.parent_run_id": first.record.parent_run_id, "stage1.trial_id": row["trial_id"],
            "stage1.checkpoint": spec.overrides["pretrained"]}
    if first.record.winner == row["trial_id"] and first.record.model_uri:
        tags["stage1.registered_model"] = first.record.model_uri
    return run_sweep(spec, console=console, extra_tags=tags)


def stage2_name(storage: Path, stage1_name: str, family: str) -> str:
    """NAME-stage2-FAMILY as one folder name (timm/<name> families too), with -2, -3 ... when a sweep of that name
    exists (a family whose best trial changed when stage 1 grew). A name over --name's limit keeps its start and
    ends in a short hash of the whole, so it stays one name --resume --name accepts, the same on every run."""
    base = f"{stage1_name}-stage2-{slug(family)}"
    name, k = _fit(base, ""), 1
    while (storage / name).exists():
        k += 1
        name = _fit(base, f"-{k}")
    return name


def _fit(base: str, suffix: str) -> str:
    if len(base) + len(suffix) <= NAME_MAX:
        return base + suffix
    digest = "-" + hashlib.sha256(base.encode()).hexdigest()[:8]
    return base[:NAME_MAX - len(digest) - len(suffix)] + digest + suffix
