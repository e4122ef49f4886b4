"""`--set pretrained=hub`: published weights through timm's and torchvision's own loaders and caches.

No test touches the network: each fills the library's cache the way a download would (a Hugging Face Hub snapshot
for timm, $TORCH_HOME/hub/checkpoints for torchvision) with weights it saved itself, and runs with
HF_HUB_OFFLINE=1. The loaders read those variables when imported, hence the subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainables.classify import build_model
from trainables.config import TrialConfig
from trainables.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
DEIT_REPO = "timm/deit_tiny_patch16_224.fb_in1k"  # timm's default tag of deit_tiny_patch16_224


def offline_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "TORCH_HOME": str(tmp_path / "torch"),
            "PYTHONPATH": str(ROOT)}


def cache_deit_tiny(tmp_path: Path) -> dict[str, torch.Tensor]:
    """Put ImageNet-shaped deit_tiny weights where huggingface_hub keeps a downloaded snapshot."""
    import timm
    from safetensors.torch import save_file

    state = timm.create_model("deit_tiny_patch16_224", pretrained=False).state_dict()
    repo = tmp_path / "hf" / "hub" / ("models--" + DEIT_REPO.replace("/", "--"))
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, repo / "snapshots" / revision / "model.safetensors")
    return state


def run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=offline_env(tmp_path), capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)


LOAD_AND_DUMP = """
import json, sys, torch
from trainables.classify import build_model
from trainables.config import TrialConfig
from trainables.errors import UserError
cfg = TrialConfig.from_dict({"model": sys.argv[1], "pretrained": "hub", "image_size": int(sys.argv[2])})
try:
    model = build_model(cfg, 10, torch.device("cpu"), int(sys.argv[2]))
except UserError as exc:
    print("error:", exc); raise SystemExit(2)
torch.save(model.state_dict(), "loaded.pt")
"""


def load_with_hub(model: str, image_size: int, tmp_path: Path) -> dict[str, torch.Tensor]:
    code = LOAD_AND_DUMP.replace("sys.argv[1]", repr(model)).replace("sys.argv[2]", repr(image_size))
    proc = run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return torch.load(tmp_path / "loaded.pt", weights_only=True)


def test_timm_model_loads_the_cached_hub_snapshot_resampled_with_a_new_head(tmp_path):
    published = cache_deit_tiny(tmp_path)
    loaded = load_with_hub("deit_tiny", 32, tmp_path)
    for key in ("blocks.0.attn.qkv.weight", "blocks.11.mlp.fc2.bias", "patch_embed.proj.weight", "norm.weight"):
        assert torch.equal(loaded[key], published[key]), key
    assert loaded["head.weight"].shape == (10, 192)  # 1000 ImageNet classes -> 10, re-initialised by timm
    # 14x14 patch grid at 224 px -> 2x2 at 32 px: timm's filter resampled the position embedding
    assert published["pos_embed"].shape == (1, 197, 192) and loaded["pos_embed"].shape == (1, 5, 192)
    assert torch.equal(loaded["pos_embed"][:, 0], published["pos_embed"][:, 0])  # the class token's is kept


def test_torchvision_resnet_loads_its_cached_imagenet_weights(tmp_path):
    import torchvision

    published = torchvision.models.resnet34(weights=None).state_dict()
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    url = torchvision.models.ResNet34_Weights.DEFAULT.url
    torch.save(published, checkpoints / url.rsplit("/", 1)[1])
    loaded = load_with_hub("resnet34_imagenet", 32, tmp_path)
    for key in ("conv1.weight", "layer4.2.bn2.running_var", "layer3.5.conv2.weight"):
        assert torch.equal(loaded[key], published[key]), key
    assert loaded["fc.weight"].shape == (10, 512)


def test_offline_without_a_cached_copy_is_one_line(tmp_path):
    code = LOAD_AND_DUMP.replace("sys.argv[1]", "'deit_tiny'").replace("sys.argv[2]", "32")
    proc = run_python(code, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = proc.stdout.strip()
    assert "\n" not in line and "Traceback" not in proc.stderr
    assert line.startswith(f"error: pretrained=hub: cannot fetch the weights of 'deit_tiny' from "
                           f"https://huggingface.co/{DEIT_REPO} (LocalEntryNotFoundError")
    assert "--set pretrained=PATH" in line


@pytest.mark.parametrize("model", ["resnet18", "vit_scratch", "cnn_basic"])
def test_cifar_nets_have_no_published_weights(model):
    cfg = TrialConfig.from_dict({"model": model, "pretrained": "hub"})
    with pytest.raises(UserError, match=f"model '{model}' has no published weights for pretrained=hub; it works for "
                                        f".*resnet34_imagenet.*timm/<name>"):
        build_model(cfg, 10, torch.device("cpu"), 32)


def test_sweep_with_pretrained_hub(tmp_path):
    """A real one-trial sweep: the driver's preflight and the Ray trial both load through the cache."""
    cache_deit_tiny(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "tuner.run", "--space", "vit_finetune", "--dataset", "digits", "--num-samples", "1",
         "--max-epochs", "1", "--set", "pretrained=hub", "--set", "model=deit_tiny", "--set", "freeze_backbone=true",
         "--storage", str(tmp_path / "sweeps"), "--name", "hub", "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db"],
        env=offline_env(tmp_path), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "sweeps" / "hub" / "trials.parquet").to_pylist()
    assert [(r["status"], r["pretrained"], r["model"]) for r in rows] == [("finished", "hub", "deit_tiny")]
    spec = json.loads((tmp_path / "sweeps" / "hub" / "sweep.json").read_text())["spec"]
    assert spec["overrides"]["pretrained"] == "hub"  # kept as given, not resolved into a path
