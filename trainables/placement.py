"""Where a trial's training images live: on its GPU as uint8 for the trial's lifetime when every trial packed on that
GPU fits with its own copy (airbench's data path), else where they already are in host memory (the memory-mapped
cache, whose pages every trial on the node shares), each batch gathered into one of two pinned staging buffers and
copied asynchronously. No trial makes a full host copy, pinned or not.

The driver tells each trial what it measured (set_trial_budget, from tuner.packing's trainable): its GPU share
(1 / trials per GPU) and a training step's peak GPU memory. Data stay on the GPU only when data + step peak fit
that share of the GPU; without a measured peak, when the data take at most GPU_SHARE of the share.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

GPU_SHARE = 0.25  # without a measured step peak: data may take this much of the trial's share of the GPU


@dataclass
class TrialBudget:
    """What this trial process may use of its GPU: its share (Ray's fractional GPU) and its step's measured peak."""

    gpu_fraction: float = 0.0  # 0: ask Ray (outside Ray: the whole GPU)
    step_gpu_bytes: int = 0  # 0: not measured
    resident_bytes: int = 0  # what earlier DeviceImages of this trial put on the GPU


_BUDGET = TrialBudget()


def set_trial_budget(gpu_fraction: float = 0.0, step_gpu_bytes: int = 0) -> None:
    """Called at the start of each trial (a reused Ray actor runs several): its share and measured step peak."""
    global _BUDGET
    _BUDGET = TrialBudget(gpu_fraction, step_gpu_bytes)


def host_tensor(array: np.ndarray) -> torch.Tensor:
    """`array` as a CPU tensor sharing its memory. Memory-mapped caches and object-store arrays are read-only, which
    torch warns about on every conversion; nothing here writes to them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


class DeviceImages:
    """uint8 (N, 3, H, W) images; `batch(idx)` returns the rows `idx` on the training device."""

    def __init__(self, array: np.ndarray, device: torch.device, resident: bool | None = None) -> None:
        host = host_tensor(array)
        self.device = device
        if resident is None:
            resident = device.type != "cuda" or fits_on_gpu(host.nbytes, device)
        self.resident = resident
        if resident:
            self.images = host.to(device, non_blocking=True) if device.type == "cuda" else host
            return
        pin = device.type == "cuda"
        self.images = host  # no copy: with a memory-mapped cache, the node's page cache is the one host copy
        # two pinned staging buffers: while one batch copies to the GPU, the next is gathered into the other
        self._buffers: list[torch.Tensor | None] = [None, None]
        self._copied: list[torch.cuda.Event | None] = [None, None]
        self._pin = pin
        self._turn = 0

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        if self.resident:
            # index_select: a plain row gather, ~2x faster on CPU than advanced indexing (tuner.bench)
            return self.images.index_select(0, idx)
        idx = idx.cpu()
        turn, self._turn = self._turn, 1 - self._turn
        shape = (len(idx),) + tuple(self.images.shape[1:])
        buffer = self._buffers[turn]
        if buffer is None or buffer.shape != shape:
            buffer = self._buffers[turn] = torch.empty(shape, dtype=self.images.dtype, pin_memory=self._pin)
        if self._copied[turn] is not None:
            self._copied[turn].synchronize()  # the copy that last read this buffer is done
        torch.index_select(self.images, 0, idx, out=buffer)
        if self.device.type != "cuda":
            return buffer.clone()
        out = buffer.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._copied[turn] = event
        return out


def fits_on_gpu(nbytes: int, device: torch.device) -> bool:
    """Whether `nbytes` more data may live on the GPU: every trial packed on it holds its own copy, so this trial's
    data and its step peak must fit its share of the GPU (and what is free now). Counted when it fits."""
    free, total = torch.cuda.mem_get_info(device)
    share = _BUDGET.gpu_fraction or _ray_gpu_fraction()
    mine = total * min(share, 1.0)
    held = _BUDGET.resident_bytes + nbytes
    if _BUDGET.step_gpu_bytes:
        fits = held + _BUDGET.step_gpu_bytes <= mine and nbytes <= free
    else:
        fits = held <= GPU_SHARE * min(mine, free + _BUDGET.resident_bytes)
    if fits:
        _BUDGET.resident_bytes = held
    return fits


def _ray_gpu_fraction() -> float:
    """The GPU share Ray gave this trial (0.25 when 4 trials share a GPU); 1 outside Ray."""
    try:
        import ray

        gpus = ray.get_runtime_context().get_assigned_resources().get("GPU", 0) if ray.is_initialized() else 0
    except Exception:  # noqa: BLE001 - outside Ray (tests, benchmarks)
        gpus = 0
    return float(gpus) if 0 < gpus < 1 else 1.0
