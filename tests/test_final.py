"""Test once, reseeding, warm start and growing a sweep: pure parts, then real sweeps through Ray and MLflow."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import REPO, run_cli
from trainables.classify import CHECKPOINT_FILE, save_atomic, train_epochs
from trainables.config import TrialConfig
from trainables.data import load_dataset
from tuner import final, reseed
from tuner.folder import FINAL_FILE

FAST = dict(model="cnn_basic", width=0.5, image_size=16, batch_size=32, opt="adamw", lr=3e-3, max_epochs=1)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_scores_from_logits_per_class_and_confusion():
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [5.0, 0, 0], [0, 0, 5.0], [0, 5.0, 0]])
    labels = torch.tensor([0, 1, 1, 2, 2])
    out = final.scores_from_logits(logits, labels, 3)
    assert out.top1 == pytest.approx(60.0) and out.top5 == pytest.approx(100.0) and out.images == 5
    assert out.confusion == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]  # rows: true class
    assert out.per_class_top1 == pytest.approx([100.0, 50.0, 50.0])
    assert out.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())


def test_test_once_makes_exactly_one_pass(digits, tmp_path, monkeypatch):
    """Every test image goes through the net once, and nothing else of the test split is read."""
    import trainables.classify as classify

    _, state = next(train_epochs(TrialConfig.from_dict(FAST), digits.without_test()))
    save_atomic(state(), str(tmp_path / CHECKPOINT_FILE))
    seen = []
    real_load = classify.load_checkpoint_model

    def counting_load(path, device="cpu"):
        model, cfg = real_load(path, device)
        model.net.register_forward_hook(lambda module, args, out: seen.append(len(args[0])))
        return model, cfg

    monkeypatch.setattr(classify, "load_checkpoint_model", counting_load)
    model, result = final.test_once(str(tmp_path), digits, batch_size=100)
    assert sum(seen) == len(digits.test_y) == result.images and len(seen) == math.ceil(len(digits.test_y) / 100)
    # the figures agree with the returned model's own predictions on the same images
    with torch.no_grad():
        predicted = model(torch.from_numpy(digits.test_x).float() / 255).argmax(1).numpy()
    # (the packaged model normalises in another order than the trial's path: allow one borderline image)
    assert result.top1 == pytest.approx(100 * float(np.mean(predicted == digits.test_y)), abs=100 / 360 + 1e-9)
    assert sum(map(sum, result.confusion)) == len(digits.test_y)


def test_a_truncated_best_checkpoint_gives_way_to_the_next_best(digits, tmp_path):
    _, state = next(train_epochs(TrialConfig.from_dict(FAST), digits.without_test()))
    for name in ("best", "second"):
        (tmp_path / name).mkdir()
        save_atomic(state(), str(tmp_path / name / CHECKPOINT_FILE))
    file = tmp_path / "best" / CHECKPOINT_FILE
    file.write_bytes(file.read_bytes()[:1000])  # torn by a crash
    rows = [{**row("best", "cnn_basic", 90.0), "checkpoint": str(tmp_path / "best")},
            {**row("second", "cnn_basic", 80.0), "checkpoint": str(tmp_path / "second")}]
    (pick,), models = final.evaluate_families(rows, digits, tmp_path)
    assert pick.trial_id == "second" and pick.test.images == len(digits.test_y) and set(models) == {"cnn_basic"}
    assert pq.read_table(tmp_path / FINAL_FILE).column("trial_id").to_pylist() == ["second"]


def row(trial_id, model, val, status="finished", **config):
    return {"trial_id": trial_id, "model": model, "best_val_top1": val, "status": status, "checkpoint": "/ckpt",
            "lr": config.get("lr", 0.1), "seed": 0}


def test_best_per_family_ranks_on_validation_and_skips_failures():
    rows = [row("a", "cnn_basic", 80.0), row("b", "cnn_basic", 90.0), row("c", "resnet18", 70.0),
            row("d", "resnet18", 99.0, status="failed"), row("e", "vit_scratch", math.nan)]
    best = final.best_per_family(rows, top=2)
    assert {k: [r["trial_id"] for r in v] for k, v in best.items()} == {"cnn_basic": ["b", "a"], "resnet18": ["c"]}


def test_reseed_points_and_grouping_round_trip():
    rows = [row("a", "cnn_basic", 80.0, lr=0.1), row("b", "cnn_basic", 90.0, lr=0.2), row("c", "resnet18", 70.0)]
    points = reseed.reseed_points(rows, top=1, seeds=3, base_seed=5)
    assert len(points) == 6 and {p["seed"] for p in points} == {1005, 2005, 3005}
    assert {(p["model"], p["lr"]) for p in points} == {("cnn_basic", 0.2), ("resnet18", 0.1)}
    copies = [{**p, "trial_id": f"r{i}"} for i, p in enumerate(points)]
    groups = reseed.group_reseeds(rows, copies)
    assert sorted(groups) == ["b", "c"] and all(len(v) == 3 for v in groups.values())
    assert reseed.reseed_points(rows, top=1, seeds=3, base_seed=5, done={"b", "c"}) == []


# --------------------------------------------------------------------------- real sweeps


def sweep_args(storage, mlflow_uri, name, *extra):
    return ("--space", "resnet_rsb", "--dataset", "digits", "--storage", str(storage), "--name", name,
            "--mlflow-uri", mlflow_uri, "--set", "model=cnn_basic", "--set", "width=0.5", "--set", "image_size=16",
            "--set", "randaugment_magnitude=0", *extra)


@pytest.fixture(scope="module")
def reseeded_sweep(tmp_path_factory, mlflow_server):
    storage = tmp_path_factory.mktemp("final") / "sweeps"
    proc = run_cli(*sweep_args(storage, mlflow_server.uri, "base", "--num-samples", "4", "--max-epochs", "2",
                               "--reseed", "2", "--reseed-top", "1"), cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return storage, mlflow_server, proc.stdout


@pytest.mark.integration
def test_reseeded_family_tested_once_and_logged(reseeded_sweep, digits):
    import mlflow

    storage, server, stdout = reseeded_sweep
    sweep = storage / "base"
    (pick,) = pq.read_table(sweep / FINAL_FILE).to_pylist()
    copies = pq.read_table(sweep / "reseeds.parquet").to_pylist()
    assert len(copies) == 2 and {c["seed"] for c in copies} == {1000, 2000}
    assert pick["family"] == "cnn_basic" and pick["seeds"] == 2
    assert pick["trial_id"] in {c["trial_id"] for c in copies}  # the tested model is a re-trained copy
    trials = pq.read_table(sweep / "trials.parquet").to_pylist()
    origin = max((t for t in trials if t["status"] in ("finished", "stopped", "early_stopped")),
                 key=lambda t: t["best_val_top1"])
    assert pick["searched_trial_id"] == origin["trial_id"]
    assert pick["val_top1_mean"] == pytest.approx(np.mean([c["best_val_top1"] for c in copies]))
    assert pick["test_images"] == len(digits.test_y) and len(pick["per_class_top1"]) == 10
    assert pick["classes"] == list(digits.classes)
    png = sweep / pick["confusion_png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "±" in stdout and "tested once" in stdout

    client = mlflow.MlflowClient(server.uri)
    parent_id = json.loads((sweep / "sweep.json").read_text())["parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.data.metrics["test_top1.cnn_basic"] == pytest.approx(pick["test_top1"])
    assert parent.data.metrics["test_top1_std.cnn_basic"] == pytest.approx(pick["test_top1_std"])
    artifacts = {a.path for a in client.list_artifacts(parent_id, "test")}
    assert {"test/final.parquet", f"test/{pick['confusion_png']}"} <= artifacts
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    reseed_runs = [r for r in children if r.data.tags.get("sweep.role") == "reseed"]
    assert len(reseed_runs) == 2 and len(children) == 4 + 2
    tested = [r for r in children if r.data.tags.get("sweep.tested") == "true"]
    assert [r.data.tags["trial_id"] for r in tested] == [pick["trial_id"]]
    assert tested[0].data.metrics["test_top1"] == pytest.approx(pick["test_top1"])


@pytest.mark.integration
def test_add_trials_grows_without_rerunning(reseeded_sweep):
    import mlflow

    storage, server, _ = reseeded_sweep
    sweep = storage / "base"
    before = {r["trial_id"]: r for r in pq.read_table(sweep / "trials.parquet").to_pylist()}
    epochs_before = pq.read_table(sweep / "epochs.parquet").to_pylist()
    proc = run_cli("--space", "resnet_rsb", "--storage", str(storage), "--name", "base", "--add-trials", "2",
                   cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = {r["trial_id"]: r for r in pq.read_table(sweep / "trials.parquet").to_pylist()}
    assert len(after) == len(before) + 2 and set(before) < set(after)
    for trial_id, old in before.items():  # old trials untouched: same epochs, same timings, same checkpoint
        assert {k: after[trial_id][k] for k in ("epochs", "wall_s", "checkpoint")} == \
               {k: old[k] for k in ("epochs", "wall_s", "checkpoint")}
    epochs_after = pq.read_table(sweep / "epochs.parquet").to_pylist()
    assert [e for e in epochs_after if e["trial_id"] in before] == epochs_before
    record = json.loads((sweep / "sweep.json").read_text())
    assert record["completed"] and [{k: r[k] for k in ("dir", "num_samples")} for r in record["rounds"]] == \
        [{"dir": "more-1", "num_samples": 2}]
    assert record["rounds"][0]["elapsed_s"] > 0  # what --time-budget counts for that round
    client = mlflow.MlflowClient(server.uri)
    parent = client.get_run(record["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{record['parent_run_id']}'")
    trial_runs = [r for r in children if r.data.tags.get("sweep.role") != "reseed"]
    assert sorted(r.data.tags["trial_id"] for r in trial_runs) == sorted(after)
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)
    # searcher history: the added round's Optuna study holds every earlier scored trial, then the new ones
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch()
    searcher.restore_from_dir(str(sweep / "more-1"))
    scored = [r for r in before.values() if r["status"] in ("finished", "stopped", "early_stopped")]
    values = [t.value for t in searcher._ot_study.trials]
    assert len(values) == len(scored) + 2
    assert values[:len(scored)] == pytest.approx([r["best_val_top1"] for r in scored])


@pytest.mark.integration
def test_warm_start_runs_the_earlier_best_configs_first(reseeded_sweep):
    storage, server, _ = reseeded_sweep
    earlier = pq.read_table(storage / "base" / "trials.parquet").to_pylist()
    best = max((r for r in earlier if r["status"] in ("finished", "stopped", "early_stopped")),
               key=lambda r: r["best_val_top1"])
    proc = run_cli(*sweep_args(storage, server.uri, "warm", "--num-samples", "2", "--max-epochs", "1",
                               "--warm-start", str(storage / "base")), cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    warm = pq.read_table(storage / "warm" / "trials.parquet").to_pylist()
    searched = ("opt", "lr", "weight_decay", "warmup_epochs", "loss", "label_smoothing", "mixup_alpha",
                "cutmix_alpha", "mix_switch_prob", "drop_path")
    first = [r for r in warm if all(r[k] == pytest.approx(best[k]) if isinstance(best[k], float) else r[k] == best[k]
                                    for k in searched)]
    assert len(first) == 1, "the earlier sweep's best config is among the first trials"
    assert json.loads((storage / "warm" / "sweep.json").read_text())["spec"]["warm_start"] == \
        str(storage / "base")


def test_warm_start_from_a_folder_without_trials_is_one_line(tmp_path, capsys):
    from tuner.run import EXIT_USER_ERROR, main

    code = main(["--space", "resnet_rsb", "--dataset", "digits", "--storage", str(tmp_path / "s"),
                 "--warm-start", str(tmp_path), "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    out = capsys.readouterr().out
    assert code == EXIT_USER_ERROR and "--warm-start" in out and "no trials.parquet" in out
    assert not (tmp_path / "s").exists()


def test_add_trials_on_an_unfinished_or_missing_sweep_is_one_line(tmp_path, capsys):
    from tuner.run import EXIT_USER_ERROR, main

    code = main(["--space", "resnet_rsb", "--storage", str(tmp_path), "--name", "nope", "--add-trials", "3"])
    assert code == EXIT_USER_ERROR and "no sweep" in capsys.readouterr().out
    os.makedirs(tmp_path / "half")
    (tmp_path / "half" / "sweep.json").write_text(json.dumps({
        "spec": {"space": "resnet_rsb", "dataset": "digits", "num_samples": 2, "max_epochs": 1,
                 "storage": str(tmp_path), "name": "half"}, "parent_run_id": "x", "completed": False}))
    code = main(["--space", "resnet_rsb", "--storage", str(tmp_path), "--name", "half", "--add-trials", "3"])
    assert code == EXIT_USER_ERROR and "not finished; continue it with --resume" in capsys.readouterr().out
