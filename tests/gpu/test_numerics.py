"""One training step under bf16 autocast + channels_last agrees with fp32: the trial loop (train_epochs) itself,
within a stated tolerance."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from tests.gpu.helpers import generated, needs_cuda, relative, trial_epochs

pytestmark = pytest.mark.gpu

# bf16 keeps 8 bits of mantissa (about 0.4 % per rounding); the loss of a whole forward pass, averaged over a
# batch, stays well within 2 % of fp32's, before the step and after it
BF16_RTOL = 0.02
BASE = {"max_epochs": 1, "seed": 0, "opt": "adamw", "lr": 1e-3, "crop_padding": 4, "hflip": True}


@contextmanager
def exact_fp32():
    """fp32 as written: no TF32 in cuBLAS or cuDNN, so the reference is the real fp32 result."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("model", ["resnet18", "vit_scratch"])
def test_bf16_channels_last_step_agrees_with_fp32(model, device, record_property):
    needs_cuda(device, "bf16 autocast and channels_last apply on CUDA only (the trial loop ignores them on a CPU)")
    batch = 128
    data = generated(batch, 512)  # one update per epoch: the loss before the step, then validation after it
    config = {**BASE, "model": model, "batch_size": batch}
    fast = trial_epochs({**config, "amp": True, "channels_last": True}, data, device)[0]
    with exact_fp32():
        exact = trial_epochs({**config, "amp": False, "channels_last": False}, data, device)[0]
    for key in ("train_loss", "val_loss"):
        diff = relative(fast[key], exact[key])
        record_property(f"{key}_relative_difference", f"{diff:.2e} (tolerance {BF16_RTOL})")
        assert diff <= BF16_RTOL, f"{key}: bf16 {fast[key]:.5f} vs fp32 {exact[key]:.5f}"
