"""Two-stage resume and grow, decided from the sweep folders alone: stage-1 and stage-2 folders written with
tuner.folder's own API (sweep.json + trials.parquet), no Ray, no training. The end-to-end kill-and-resume is
tests/test_stages.py's slow integration test."""

from __future__ import annotations

import dataclasses

import pytest

from trainables.config import TrialConfig
from tuner.folder import SweepFolder, SweepRecord, SweepState
from tuner.results import TrialStatus
from tuner.spec import build_spec, check_name
from tuner.stages import NAME_MAX, Step, pending_stages, plan_stages, stage2_name, stage2_spec

FAMILIES = ("resnet18", "vit_scratch")


def trial(storage, sweep: str, trial_id: str, model: str, val: float, status=TrialStatus.FINISHED) -> dict:
    cfg = TrialConfig(model=model, width=0.25, image_size=16).to_dict()
    return {**cfg, "trial_id": trial_id, "status": str(status), "epochs": 1, "best_val_top1": val,
            "last_val_top1": val, "last_val_loss": 1.0, "images_per_s": 1.0, "wall_s": 1.0, "node_id": "n",
            "checkpoint": str(storage / sweep / f"trial_{trial_id}" / "checkpoint_000000"), "error": None}


def stage_one(storage, rows: list[dict], stage2: dict | None = None, name: str = "two") -> SweepFolder:
    """A finished stage-1 sweep of vit_pretrain_finetune with these trials, listing these stage-2 sweeps."""
    spec = build_spec(space="vit_pretrain_finetune", dataset="digits", storage=str(storage), name=name)
    folder = SweepFolder(storage / name)
    folder.write_record(SweepRecord(spec=spec, state=SweepState.COMPLETE, stage2=stage2 or {}))
    folder.write_trials(rows)
    return folder


def stage_two(storage, first: SweepFolder, family: str, state: SweepState | None) -> str:
    """The family's stage-2 sweep folder as a kill left it: complete, cut short, or (None) not yet recorded."""
    sweep = first.load()
    entry = sweep.record.stage2[family]
    row = sweep.trial(entry["from_trial"])
    if state is not None:
        spec = stage2_spec(sweep.spec, entry["name"], row)
        SweepFolder(storage / entry["name"]).write_record(SweepRecord(spec=spec, state=state))
    return entry["name"]


@pytest.fixture
def rows(tmp_path):
    return [trial(tmp_path, "two", "a1", "resnet18", 60.0), trial(tmp_path, "two", "a2", "resnet18", 70.0),
            trial(tmp_path, "two", "b1", "vit_scratch", 50.0), trial(tmp_path, "two", "b2", "vit_scratch", 40.0),
            trial(tmp_path, "two", "c1", "resnet18", 99.0, status=TrialStatus.FAILED)]  # failed: never a pick


def recorded(*pairs) -> dict:
    return {family: {"name": f"two-stage2-{family}", "from_trial": trial_id} for family, trial_id in pairs}


def steps(folder: SweepFolder) -> dict[str, tuple[str, Step, bool]]:
    return {s.family: (s.name, s.step, s.recorded) for s in plan_stages(folder.load())}


def test_killed_in_the_first_stage2_resumes_it_and_starts_the_other(tmp_path, rows):
    first = stage_one(tmp_path, rows, recorded(("resnet18", "a2")))
    stage_two(tmp_path, first, "resnet18", SweepState.RUNNING)
    assert steps(first) == {"resnet18": ("two-stage2-resnet18", Step.RESUME, True),
                            "vit_scratch": ("two-stage2-vit_scratch", Step.START, False)}
    assert pending_stages(first.load()) == list(FAMILIES)


def test_killed_in_the_second_stage2_resumes_only_it(tmp_path, rows):
    first = stage_one(tmp_path, rows, recorded(("resnet18", "a2"), ("vit_scratch", "b1")))
    stage_two(tmp_path, first, "resnet18", SweepState.COMPLETE)
    stage_two(tmp_path, first, "vit_scratch", SweepState.INTERRUPTED)
    assert steps(first) == {"resnet18": ("two-stage2-resnet18", Step.DONE, True),
                            "vit_scratch": ("two-stage2-vit_scratch", Step.RESUME, True)}
    assert pending_stages(first.load()) == ["vit_scratch"]


def test_killed_between_recording_a_stage2_and_its_start_starts_it_under_its_recorded_name(tmp_path, rows):
    first = stage_one(tmp_path, rows, recorded(("resnet18", "a2"), ("vit_scratch", "b1")))
    stage_two(tmp_path, first, "resnet18", SweepState.COMPLETE)
    (tmp_path / stage_two(tmp_path, first, "vit_scratch", None)).mkdir()  # its folder, with no sweep.json yet
    assert steps(first)["vit_scratch"] == ("two-stage2-vit_scratch", Step.START, True)  # not -2: nothing ran
    assert pending_stages(first.load()) == ["vit_scratch"]


def test_every_stage2_complete_leaves_nothing_to_resume(tmp_path, rows):
    first = stage_one(tmp_path, rows, recorded(("resnet18", "a2"), ("vit_scratch", "b1")))
    for family in FAMILIES:
        stage_two(tmp_path, first, family, SweepState.COMPLETE)
    assert {f: s[1] for f, s in steps(first).items()} == {f: Step.DONE for f in FAMILIES}
    assert pending_stages(first.load()) == []


def test_add_trials_starts_a_new_stage2_only_for_a_family_whose_best_changed(tmp_path, rows):
    first = stage_one(tmp_path, rows, recorded(("resnet18", "a2"), ("vit_scratch", "b1")))
    for family in FAMILIES:
        stage_two(tmp_path, first, family, SweepState.COMPLETE)
    grown = rows + [trial(tmp_path, "two", "a3", "resnet18", 80.0),  # resnet18's best is now a3
                    trial(tmp_path, "two", "b3", "vit_scratch", 45.0),  # not vit_scratch's best
                    trial(tmp_path, "two", "d1", "timm/convnext_atto", 30.0)]  # a family stage 1 had not reached
    first.write_trials(grown)
    assert steps(first) == {"resnet18": ("two-stage2-resnet18-2", Step.START, False),  # the first one is kept
                            "timm/convnext_atto": ("two-stage2-timm-convnext_atto", Step.START, False),
                            "vit_scratch": ("two-stage2-vit_scratch", Step.DONE, True)}
    assert pending_stages(first.load()) == ["resnet18", "timm/convnext_atto"]


def test_add_trials_that_only_ties_a_familys_best_keeps_its_stage2(tmp_path, rows):
    first = stage_one(tmp_path, rows, recorded(("resnet18", "a2"), ("vit_scratch", "b1")))
    for family in FAMILIES:
        stage_two(tmp_path, first, family, SweepState.COMPLETE)
    # trials.parquet's rows come in trial-id order: the new trial, tied with a2, ahead of it
    first.write_trials([trial(tmp_path, "two", "a0", "resnet18", 70.0)] + rows)
    assert {f: s[1] for f, s in steps(first).items()} == {f: Step.DONE for f in FAMILIES}
    assert pending_stages(first.load()) == []
    (plan,) = [s for s in plan_stages(first.load()) if s.family == "resnet18"]
    assert plan.row["trial_id"] == "a2"  # the trial its stage 2 started from


def test_a_grown_stage2_killed_before_its_end_is_resumed_not_started_again(tmp_path, rows):
    first = stage_one(tmp_path, rows, recorded(("resnet18", "a2")))
    stage_two(tmp_path, first, "resnet18", SweepState.COMPLETE)
    first.write_trials(rows + [trial(tmp_path, "two", "a3", "resnet18", 80.0)])
    record = first.read_record()  # what run_stages records before the new stage 2 starts; then a kill
    first.write_record(dataclasses.replace(record, stage2={
        **record.stage2, "resnet18": {"name": "two-stage2-resnet18-2", "from_trial": "a3"}}))
    stage_two(tmp_path, first, "resnet18", SweepState.RUNNING)
    assert steps(first)["resnet18"] == ("two-stage2-resnet18-2", Step.RESUME, True)


def test_stage2_names_of_timm_families_are_one_folder_name_within_the_name_limit(tmp_path):
    name = stage2_name(tmp_path, "p", "timm/vit_small_patch16_224.augreg_in21k")
    assert name == "p-stage2-timm-vit_small_patch16_224.augreg_in21k" and "/" not in name
    longest = "s" * NAME_MAX  # the longest --name: its stage-2 names must still be names --resume takes
    family = "timm/" + "convnext_" * 12
    first = stage2_name(tmp_path, longest, family)
    assert len(first) == NAME_MAX and check_name(first) == first and "/" not in first
    assert stage2_name(tmp_path, longest, family) == first  # the same on every run (resume finds it)
    assert stage2_name(tmp_path, longest, "timm/other") != first  # another family, another name
    (tmp_path / first).mkdir()
    second = stage2_name(tmp_path, longest, family)
    assert second.endswith("-2") and len(second) == NAME_MAX and check_name(second) and second != first
    short = stage2_name(tmp_path, "p" * (NAME_MAX - len("-stage2-resnet18")), "resnet18")
    assert len(short) == NAME_MAX and short.endswith("-stage2-resnet18")  # at the limit: kept whole
