"""A checkpoint written on the GPU resumes on the CPU, and one written on the CPU resumes on the GPU: read back
as a trial reads it (map_location="cpu", weights_only=True), trained on, and predicting the same on both."""

from __future__ import annotations

import math

import pytest
import torch

from tests.gpu.helpers import generated

pytestmark = pytest.mark.gpu

# the same weights on two devices: TF32 convolutions on CUDA differ from fp32 by about 1e-3 relative
PROBABILITY_ATOL = 5e-3


@pytest.mark.parametrize("written_on,resumed_on", [("cuda", "cpu"), ("cpu", "cuda"), ("cpu", "cpu")])
def test_checkpoint_resumes_on_another_device(written_on, resumed_on, device, tmp_path, record_property):
    from trainables.classify import CHECKPOINT_FILE, load_checkpoint_model, save_atomic, train_epochs
    from trainables.config import TrialConfig

    if "cuda" in (written_on, resumed_on) and device.type != "cuda":
        pytest.skip("needs CUDA: it moves a checkpoint between the GPU and the CPU")
    cfg = TrialConfig.from_dict({"model": "cnn_basic", "width": 0.5, "batch_size": 64, "max_epochs": 2, "seed": 0})
    data = generated(256, 128)
    loop = train_epochs(cfg, data, device=torch.device(written_on))
    first, state = next(loop)
    loop.close()
    save_atomic(state(), str(tmp_path / CHECKPOINT_FILE))
    saved = torch.load(tmp_path / CHECKPOINT_FILE, map_location="cpu", weights_only=True)  # as resume_state reads
    resumed = [m for m, _ in train_epochs(cfg, data, device=torch.device(resumed_on), resume_from=saved)]
    assert [m["epoch"] for m in resumed] == [2] and math.isfinite(resumed[0]["train_loss"])

    there, _ = load_checkpoint_model(str(tmp_path), resumed_on)
    here, _ = load_checkpoint_model(str(tmp_path), written_on)
    for key, value in there.net.state_dict().items():
        assert torch.equal(value.cpu(), saved["model"][key].cpu()), key
    images = torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p_there = there(images.to(resumed_on)).softmax(1).cpu()
        p_here = here(images.to(written_on)).softmax(1).cpu()
    diff = (p_there - p_here).abs().max().item()
    record_property("max_probability_difference", f"{diff:.1e} (tolerance {PROBABILITY_ATOL})")
    record_property("resumed_train_loss", f"{resumed[0]['train_loss']:.4f} (epoch 1: {first['train_loss']:.4f})")
    assert diff <= PROBABILITY_ATOL
