"""Every named space: valid plain data, a dry run, and a real 2-trial 1-epoch sweep on small data."""

import json

import pyarrow.parquet as pq
import pytest
from ray.tune.search.variant_generator import generate_variants

from search_spaces import SPACES
from tuner.folder import SweepFolder
from tests.conftest import run_cli, write_image_folder
from trainables.config import TrialConfig
from tuner.spec import build_spec, sample_configs


@pytest.mark.parametrize("name", sorted(SPACES))
def test_space_is_complete_plain_data(name):
    space = SPACES[name]
    assert space.name == name and space.description and "\n" not in space.description and space.reproduces
    assert space.search in ("optuna", "grid", "random") and space.metric == "val_top1"
    keys = set(space.fixed) | set(space.params) | {k for o in space.dataset_overrides.values() for k in o}
    assert keys <= set(TrialConfig.keys()), keys - set(TrialConfig.keys())


def test_cnn_grid_enumerates_864_cells():
    spec = build_spec(space="cnn_grid", storage="/tmp/unused")
    cells = [config for _, config in generate_variants(spec.param_space())]
    assert len(cells) == 864 == 3 * 4 * 4 * 3 * 3 * 2
    axes = ("model", "lr", "weight_decay", "gamma", "sched", "augment")
    assert len({tuple(c[a] for a in axes) for c in cells}) == 864  # every cell once
    for config in cells[:: 97]:
        TrialConfig.from_dict(config)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Pretrained weights the tests save themselves, in the layout users give: a file or a folder per model."""
    import timm
    import torch
    import torchvision
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("weights")
    save_file(timm.create_model("deit_tiny_patch16_224", num_classes=1000).state_dict(),
              str(root / "deit_tiny.safetensors"))
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), root / "resnet34.pth")
    from trainables.models import create_model

    torch.save(create_model("resnet18", 100, width=0.25).state_dict(), root / "resnet18_cifar100.pth")
    return root


def _pins(name, weights, folder):
    return {
        "vit_finetune": ["--set", f"pretrained={weights}"],
        "resnet34_transfer": ["--set", f"pretrained={weights / 'resnet34.pth'}"],
        "vit_pretrain_finetune_stage2": ["--set", f"pretrained={weights / 'resnet18_cifar100.pth'}",
                                         "--set", "width=0.25"],
        "cnn_grid": ["--set", "model=cnn_basic", "--set", "lr=1e-3", "--set", "weight_decay=1e-4",
                     "--set", "gamma=0.97", "--set", "sched=cosine"],  # leaves the augmentation axis: 2 cells
        # a budget every footprint meets: a loaded machine's latency must not make a trial infeasible here
        # (infeasible configs are tested in test_multi_objective_sweep)
        "efficiency": ["--constraint", "latency_ms<=100000"],
        "imagenet100_ablation": ["--data-dir", str(folder), "--set", "image_size=64", "--set", "batch_size=16"],
    }.get(name, [])


# resnet_rsb runs in many sweeps of other tests, efficiency in test_multi_objective_sweep, an image folder in
# test_folder_sweep, a ViT in vit_finetune's: their own two-trial sweeps run in make test-all
COVERED_ELSEWHERE = {"resnet_rsb", "efficiency", "imagenet100_ablation", "vit_scratch"}


@pytest.mark.integration
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in COVERED_ELSEWHERE else n
                                  for n in sorted(set(SPACES) - {"vit_pretrain_finetune"})])  # that one: below
def test_space_runs_a_two_trial_sweep(name, tmp_path, weights):
    folder = write_image_folder(tmp_path / "imagefolder", classes=3, per_class=24, size=32)
    dataset = "folder" if SPACES[name].dataset == "folder" else "digits"
    samples = "1" if SPACES[name].search == "grid" else "2"  # a grid's --num-samples repeats every cell
    proc = run_cli("--space", name, "--dataset", dataset, "--num-samples", samples, "--max-epochs", "1",
                   "--storage", str(tmp_path / "sweeps"), "--name", "s",
                   "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *_pins(name, weights, folder),
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = pq.read_table(tmp_path / "sweeps" / "s" / "trials.parquet").to_pylist()
    assert len(rows) == 2 and all(r["status"] in ("finished", "stopped") for r in rows)
    assert all(r["epochs"] == 1 for r in rows)


@pytest.mark.parametrize("name", sorted(SPACES))
def test_dry_run(name, tmp_path, weights):
    from rich.console import Console

    from tuner.dryrun import dry_run

    extra = {"vit_finetune": [f"pretrained={weights}"], "resnet34_transfer": [f"pretrained={weights}/resnet34.pth"],
             "vit_pretrain_finetune_stage2": [f"pretrained={weights}/resnet18_cifar100.pth", "width=0.25"]}
    spec = build_spec(space=name, storage=str(tmp_path), sets=extra.get(name, []),
                      dataset="digits" if name != "imagenet100_ablation" else None)
    rows = dry_run(spec, Console(width=200), samples=2)
    assert len(rows) == 2 and all(r["parameters"] > 0 and r["activation_mb_per_image"] > 0 for r in rows)
    assert not any(tmp_path.iterdir())  # wrote nothing


@pytest.mark.integration
def test_vit_pretrain_finetune_stage2_starts_from_stage1_best(tmp_path):
    """Both stages end to end; every stage-2 trial provably starts from its family's best stage-1 weights."""
    import mlflow
    import torch

    from trainables.classify import build_model
    from trainables.config import TrialConfig

    proc = run_cli("--space", "vit_pretrain_finetune", "--dataset", "digits", "--num-samples", "1",
                   "--max-epochs", "1", "--storage", str(tmp_path / "sweeps"), "--name", "p",
                   "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stage1 = SweepFolder(tmp_path / "sweeps" / "p").read_trials()  # checkpoints resolved where the folder is
    assert sorted(r["model"] for r in stage1) == ["resnet18", "vit_scratch"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for first in stage1:
        family = first["model"]
        stage2 = pq.read_table(tmp_path / "sweeps" / f"p-stage2-{family}" / "trials.parquet").to_pylist()
        assert len(stage2) == 1
        source = f"{first['checkpoint']}/checkpoint.pt"
        row = stage2[0]
        assert row["pretrained"] == source and row["model"] == family and row["status"] == "finished"
        # the weights a stage-2 trial is built with are stage 1's best, tensor for tensor (head aside)
        cfg = TrialConfig.from_dict({k: row[k] for k in TrialConfig.keys()})
        start = build_model(cfg, 10, torch.device("cpu"), cfg.image_size or 32).state_dict()
        trained = torch.load(source, weights_only=True)["model"]
        assert start.keys() == trained.keys()
        assert all(torch.equal(start[k], trained[k]) for k in trained)
        parent = client.search_runs([client.get_experiment_by_name("vit_pretrain_finetune_stage2").experiment_id],
                                    filter_string=f"tags.`stage1.trial_id` = '{first['trial_id']}'")
        assert len(parent) == 1 and parent[0].data.tags["stage1.checkpoint"] == source
        # one registered model per family, under its own name
        assert json.loads((tmp_path / "sweeps" / f"p-stage2-{family}" / "sweep.json").read_text())[
            "model_uri"].startswith(f"models:/vit_pretrain_finetune-{family}-")
    # one summary for both stages: each family's stage 1 and stage 2 side by side, and the Ray dashboard's line
    out = " ".join(proc.stdout.split())
    assert out.count("each model family: stage 1") == 1, out[-3000:]
    assert out.count("Ray dashboard: http") == 3  # stage 1 and each family's stage 2
