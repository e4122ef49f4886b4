"""torch.compile gives the loss eager mode gives, in the trial loop (train_epochs), within a stated tolerance.

Its own file, last in name order: compiling is the slowest check, so the others have run when it starts.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.gpu.helpers import generated, relative, trial_epochs

pytestmark = pytest.mark.gpu

# compiled and eager both in bf16 on CUDA: fused kernels round in another order, within bf16's error again
COMPILE_RTOL_CUDA = 0.02
COMPILE_RTOL_CPU = 1e-3  # fp32 on a CPU: only the order of float sums differs
BASE = {"max_epochs": 1, "seed": 0, "opt": "adamw", "lr": 1e-3, "crop_padding": 4, "hflip": True}


def test_compile_gives_the_same_loss(device, record_property):
    if device.type == "cpu" and not os.environ.get("GPUCHECK_CPU_COMPILE"):
        pytest.skip("CPU form: torch.compile on a CPU builds C++ kernels (153 s for cnn_basic on a 2-core box, "
                    "beyond the CPU form's budget; GPUCHECK_CPU_COMPILE=1 runs it); checked on CUDA")
    cuda = device.type == "cuda"
    batch = 128 if cuda else 32
    data = generated(4 * batch, 512 if cuda else 64)
    config = {**BASE, "model": "cnn_basic", "batch_size": batch, "amp": True, "channels_last": True}
    eager = trial_epochs({**config, "compile": False}, data, device)[0]
    try:
        compiled = trial_epochs({**config, "compile": True}, data, device)[0]
    finally:
        torch._dynamo.reset()  # the next tests start from eager caches
    tolerance = COMPILE_RTOL_CUDA if cuda else COMPILE_RTOL_CPU
    for key in ("train_loss", "val_loss"):
        diff = relative(compiled[key], eager[key])
        record_property(f"{key}_relative_difference", f"{diff:.2e} (tolerance {tolerance})")
        assert diff <= tolerance, f"{key}: compiled {compiled[key]:.5f} vs eager {eager[key]:.5f}"
