"""Two-stage spaces: stage-2 sweeps named as one folder, specs that keep only what belongs to stage 2, and a sweep
killed during stage 2 that --resume finishes (every stage-2 sweep once, each to its end)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import pyarrow.parquet as pq
import pytest

from tests.conftest import run_cli
from tests.test_resilience import start_cli, wait_for_lines
from trainables.classify import CHECKPOINT_FILE
from trainables.config import ARCHITECTURE, TrialConfig
from tuner import cluster
from tuner.spec import build_spec
from tuner.stages import stage2_name, stage2_spec


def test_stage2_name_is_one_folder_name_and_never_reuses_one(tmp_path):
    assert stage2_name(tmp_path, "p", "resnet18") == "p-stage2-resnet18"
    assert stage2_name(tmp_path, "p", "timm/convnext_atto") == "p-stage2-timm-convnext_atto"  # not a nested folder
    (tmp_path / "p-stage2-resnet18").mkdir()
    assert stage2_name(tmp_path, "p", "resnet18") == "p-stage2-resnet18-2"  # the family's best changed


def test_stage2_spec_carries_the_architecture_and_weights_but_not_warm_start_or_reseed(tmp_path):
    spec = build_spec(space="vit_pretrain_finetune", dataset="digits", storage=str(tmp_path), name="p", reseed=2,
                      warm_start=str(tmp_path / "earlier"), sets=["seed=3"])
    row = {**TrialConfig(model="resnet18", width=0.25, image_size=16).to_dict(), "trial_id": "t1",
           "checkpoint": str(tmp_path / "p" / "trial_t1" / "checkpoint_000000")}
    nxt = stage2_spec(spec, "p-stage2-resnet18", row)
    assert (nxt.space, nxt.name, nxt.warm_start, nxt.reseed) == ("vit_pretrain_finetune_stage2", "p-stage2-resnet18",
                                                                 None, 0)
    assert nxt.dataset == "digits" and nxt.then_dataset is None  # --dataset given: both stages use it
    assert {k: nxt.overrides[k] for k in TrialConfig.tagged(ARCHITECTURE)} == \
        {k: row[k] for k in TrialConfig.tagged(ARCHITECTURE)}
    assert nxt.overrides["pretrained"] == f"{row['checkpoint']}/{CHECKPOINT_FILE}" and nxt.overrides["seed"] == 3
    # without --dataset, stage 2 runs on its own space's data set
    default = build_spec(space="vit_pretrain_finetune", storage=str(tmp_path), name="q")
    assert stage2_spec(default, "q-2", row).dataset == "cifar10"


@pytest.mark.slow  # minutes: make test-all runs it; both stages run in CI (test_spaces)
@pytest.mark.integration
def test_killed_during_stage2_resume_finishes_every_stage2_sweep(tmp_path):
    args = ["--space", "vit_pretrain_finetune", "--dataset", "digits", "--num-samples", "2", "--max-epochs", "1",
            "--name", "two", "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    proc = start_cli(*args, cwd=tmp_path)
    lines = wait_for_lines(proc, "stage 2", 1)
    lines += wait_for_lines(proc, " after epoch ", 1)  # a stage-2 trial finished; the rest still to run
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    storage = tmp_path / "sweeps"
    record = json.loads((storage / "two" / "sweep.json").read_text())
    assert record["completed"] and len(record["stage2"]) == 1, "".join(lines)  # killed inside the first stage 2

    resumed = run_cli("--space", "vit_pretrain_finetune", "--resume", "--name", "two", cwd=tmp_path, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    record = json.loads((storage / "two" / "sweep.json").read_text())
    assert sorted(record["stage2"]) == ["resnet18", "vit_scratch"]
    stage1 = {r["model"]: r for r in pq.read_table(storage / "two" / "trials.parquet").to_pylist()}
    for family, entry in record["stage2"].items():
        assert entry["name"] == f"two-stage2-{family}"
        best = max((r for r in pq.read_table(storage / "two" / "trials.parquet").to_pylist()
                    if r["model"] == family), key=lambda r: r["best_val_top1"])
        assert entry["from_trial"] == best["trial_id"] and family in stage1
        second = json.loads((storage / entry["name"] / "sweep.json").read_text())
        assert second["completed"]
        rows = pq.read_table(storage / entry["name"] / "trials.parquet").to_pylist()
        assert len(rows) == 2 and len({r["trial_id"] for r in rows}) == 2
    assert sorted(p.name for p in storage.iterdir()) == ["two", "two-stage2-resnet18", "two-stage2-vit_scratch"]

    again = run_cli("--space", "vit_pretrain_finetune", "--resume", "--name", "two", cwd=tmp_path)
    assert again.returncode == 0 and "already complete" in again.stdout


@pytest.mark.integration
def test_every_stage_joins_the_one_instance_with_its_dashboard_and_token_hint():
    """run_stages starts Ray; each stage's sweep connects again in the same process and must still know the
    dashboard (and whether it asks for a token), or the sweep prints nothing about Ray."""
    import ray

    with cluster.connect(None) as outer:
        assert outer.started_here and outer.dashboard_url.startswith("http://127.0.0.1:"), outer
        for _ in range(2):  # stage 1, then a stage 2
            with cluster.connect(None) as inner:
                assert inner.dashboard_url == outer.dashboard_url and inner.token_auth == outer.token_auth
                assert inner == dataclasses.replace(outer, started_here=False, reaped=inner.reaped)
            assert ray.is_initialized()  # a stage's sweep leaves the instance to run_stages
    assert not ray.is_initialized()
    with cluster.connect(None) as fresh:  # a new instance after the first is gone: started, not remembered
        assert fresh.started_here and fresh.dashboard_url.startswith("http://127.0.0.1:")
