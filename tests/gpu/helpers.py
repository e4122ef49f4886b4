"""What the gpu tests share: generated data, a trial run to its end, tolerances' arithmetic, CUDA-only skips."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch


def generated(n_train: int, n_val: int = 0):
    """Generated uint8 32 px images, 10 classes (benchmarks.gpu.random_splits: no data set needed)."""
    from benchmarks.gpu import random_splits

    return random_splits(n_train, n_val)


def trial_epochs(config: dict[str, Any], data, device: torch.device, **kwargs: Any) -> list[dict[str, Any]]:
    """Every epoch's metrics of train_epochs (the trial loop) for `config`."""
    from trainables.classify import train_epochs
    from trainables.config import TrialConfig

    return [m for m, _ in train_epochs(TrialConfig.from_dict(config), data, device=device, **kwargs)]


def relative(a: float, b: float) -> float:
    """|a - b| / |b|; infinite when either is not finite."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(b), 1e-12)


def needs_cuda(device: torch.device, why: str) -> None:
    if device.type != "cuda":
        pytest.skip(f"needs CUDA: {why}")
