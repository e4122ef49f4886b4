"""Figure 5, `gpu_images_per_s` and `packing_speedup`: training images/s per model on one GPU, and the aggregate
images/s of 1/2/4/8 trials packed on that GPU (CUDA only).

The packed trials are spawned processes: they import this module (and benchmarks.common), never Ray.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks.common import NOT_MEASURED_NO_GPU, Settings, tiled


def gpu_config(model: str, s: Settings, epochs: int):
    """The trial config of a GPU measurement: bf16 autocast and channels_last, as a trial holding a GPU trains."""
    from trainables.config import TrialConfig

    return TrialConfig.from_dict({"model": model, "batch_size": s.gpu_batch, "max_epochs": epochs,
                                  "val_every": 10_000, "opt": "adamw", "lr": 1e-3, "amp": True,
                                  "channels_last": True, "crop_padding": 4, "hflip": True})


def gpu_throughput(model: str, data, s: Settings, device) -> float:
    """Median training images/s of train_epochs on `device` (data on the device, bf16 autocast and
    channels_last on CUDA, as a trial holding a GPU trains), after one warm-up epoch."""
    from trainables.classify import train_epochs

    rates = [m["images_per_s"] for m, _ in train_epochs(gpu_config(model, s, s.gpu_epochs), data, device=device)]
    return statistics.median(rates[1:])


def packing_worker(model: str, s: Settings, device: str, barrier, results) -> None:
    """One of k packed trials (a spawned process): warm up, wait for the others, then train and report images/s."""
    import torch

    from trainables.classify import train_epochs
    from trainables.data import load_dataset

    torch.set_num_threads(1)
    data = tiled(load_dataset("digits"), s.gpu_images)
    loop = train_epochs(gpu_config(model, s, s.gpu_epochs), data, device=torch.device(device))
    next(loop)  # warm-up epoch (cuDNN autotuning, allocator)
    barrier.wait()
    rates = [m["images_per_s"] for m, _ in loop]
    results.put(statistics.median(rates))


def collect(results, procs, timeout: float = 600.0) -> list[float]:
    """One result per process; fails at once when one of them dies instead of waiting out the timeout."""
    import queue

    got: list[float] = []
    deadline = time.monotonic() + timeout
    while len(got) < len(procs):
        try:
            got.append(results.get(timeout=1.0))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"packed trial process(es) failed (exit codes {dead})" if dead else
                                   f"packed trials gave no result within {timeout:.0f} s")
    for p in procs:
        p.join()
    return got


def bench_gpu(data, s: Settings, device: str | None = None) -> tuple[Any, Any]:
    """Training images/s per model on one GPU, and aggregate images/s of k trials packed on that GPU vs one.

    Each model trains through train_epochs with its data on the GPU, bf16 autocast and channels_last (what a
    trial with a GPU does). Packing runs k processes (k = 1, 2, 4, 8 trials per GPU, as --gpus-per-trial 1/k
    gives), each training `packing_model` after a warm-up epoch, started together; speedup = the sum of their
    images/s over the images/s of one alone. Without CUDA both are the string 'not measured: no GPU'
    (`device='cpu'` runs the same code on the CPU, for tests).
    """
    import multiprocessing

    import torch

    from trainables.models import list_models

    if device is None:
        if not torch.cuda.is_available():
            return NOT_MEASURED_NO_GPU, NOT_MEASURED_NO_GPU
        device = "cuda"
    dev = torch.device(device)
    images = tiled(data, s.gpu_images)
    registered = set(list_models())
    per_model = {}
    for model in s.gpu_models:
        if model in registered:
            per_model[model] = gpu_throughput(model, images, s, dev)
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    aggregate = {}
    for k in s.packing:
        barrier, results = ctx.Barrier(k), ctx.Queue()
        procs = [ctx.Process(target=packing_worker, args=(s.packing_model, s, device, barrier, results))
                 for _ in range(k)]
        for p in procs:
            p.start()
        aggregate[str(k)] = sum(collect(results, procs))
    packing = {"model": s.packing_model, "batch_size": s.gpu_batch,
               "aggregate_images_per_s": aggregate,
               "speedup": {k: v / aggregate[str(s.packing[0])] for k, v in aggregate.items()}}
    return {"device": str(dev), "batch_size": s.gpu_batch, "images_per_s": per_model}, packing
