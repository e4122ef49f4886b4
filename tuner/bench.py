"""Benchmarks of the sweep machinery, measured side by side in one run.

    python -m tuner.bench [--json FILE] [--quick] [--only NAME,...]

    trainable_vs_bare       images/s of the trials' own loop (trainables.classify.train_epochs, and a real
                            Ray Tune trial of train_classifier) vs a bare PyTorch loop: target ratio >= 0.95
    augment_vs_torchvision  images/s of BatchAugment on uint8 tensors vs torchvision transforms on PIL images
                            through a DataLoader: target ratio >= 10 on CPU
    per_trial_overhead_s    seconds each trial adds to a 16-trial sweep, 2 at a time, beyond its own work:
                            plain Ray Tune defaults vs our configuration: target <= 1.0 s for ours
    asha_epoch_fraction     epochs TPE + ASHA spends vs full-budget random search with as many trials, and
                            the difference of their best validation top-1 (with the noise it is judged by)
    gpu_images_per_s        per model, and packing_speedup for 1/2/4/8 trials per GPU: CUDA only

One local Ray instance serves the whole run (its start is reported apart). Nothing is written to MLflow;
Ray Tune's own files go to a temporary folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

NOT_MEASURED_NO_GPU = "not measured: no GPU"
SKIPPED = "not measured: skipped (--only)"
FIGURES = ("trainable_vs_bare", "augment_vs_torchvision", "per_trial_overhead_s", "asha", "gpu")
GPU_MODELS = ("cnn_basic", "resnet18", "resnet50", "vit_scratch")


@dataclass(frozen=True)
class Settings:
    """Sizes of every measurement; `quick` is the default CI-sized run, `tiny` only proves the code paths."""

    name: str
    threads: int = 1  # torch threads of single-trial measurements: what a trial holding 1 CPU uses
    concurrency: int = 2  # trials at a time (1 CPU each) in the Ray Tune measurements
    # 1. trainable vs bare loop
    train_model: str = "cnn_basic"
    train_width: float = 1.0
    train_images: int = 384
    train_batch: int = 64
    train_rounds: int = 6  # timed epochs of each loop, interleaved, after one warm-up epoch each
    ray_epochs: int = 7  # epochs of the 1-trial Ray Tune run (the first is warm-up)
    small_width: float = 0.25  # the small model: where per-step costs outside the model show (0 rounds: skip)
    small_images: int = 768
    small_batch: int = 32
    small_rounds: int = 4
    # 2. augmentation
    aug_images: int = 8192
    aug_batch: int = 128
    aug_epochs: int = 2  # timed epochs of each pipeline, after one warm-up epoch each
    # 3. per-trial overhead
    overhead_trials: int = 16
    work_s: float = 0.25  # target duration of the fixed work of one trivial trial (calibrated to an iteration count)
    overhead_train_images: int = 64  # our trainable on tiny data: train images (val: half as many)
    report_calls: int = 10  # tune.report calls timed in the report probe, with and without a checkpoint
    import_repeats: int = 1  # fresh-process import timings: best of this many (0: not measured)
    actor_probes: int = 3  # fresh Ray actors timed
    # 4. ASHA vs random
    asha_trials: int = 16
    asha_epochs: int = 12
    asha_train_images: int = 0  # 0: all of digits' training images
    seed_repeats: int = 2  # each winner retrained with this many other seeds, to judge the noise
    # 5. GPU
    gpu_models: tuple[str, ...] = GPU_MODELS
    gpu_images: int = 16384
    gpu_batch: int = 256
    gpu_epochs: int = 3  # the first is warm-up
    packing: tuple[int, ...] = (1, 2, 4, 8)
    packing_model: str = "resnet18"


SETTINGS = {
    "full": Settings("full", train_images=768, train_rounds=8, ray_epochs=9, aug_images=16384, aug_epochs=3,
                     report_calls=20, import_repeats=3, asha_trials=32, asha_epochs=12, seed_repeats=3,
                     gpu_images=50_000, gpu_epochs=4),
    "quick": Settings("quick"),
    "tiny": Settings("tiny", train_width=0.25, train_images=64, train_batch=32, train_rounds=1, ray_epochs=2,
                     small_rounds=0,
                     aug_images=512, aug_batch=64, aug_epochs=1, overhead_trials=2, work_s=0.05,
                     overhead_train_images=32, report_calls=2, import_repeats=0, actor_probes=1, asha_trials=3,
                     asha_epochs=2, asha_train_images=96, seed_repeats=1,
                     gpu_models=("cnn_basic",), gpu_images=128, gpu_batch=32, gpu_epochs=2, packing=(1, 2),
                     packing_model="cnn_basic"),
}


# ---------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _std(values: list[float]) -> float:
    return float(statistics.stdev(values)) if len(values) > 1 else 0.0


def _subset(data, n_train: int, n_val: int | None = None):
    """The first n_train training (and n_val validation) images of a data set, without its test split."""
    return dataclasses.replace(data.without_test(), train_x=data.train_x[:n_train], train_y=data.train_y[:n_train],
                               **({} if n_val is None else {"val_x": data.val_x[:n_val], "val_y": data.val_y[:n_val]}))


def _tiled(data, n: int):
    """n training images: the data set's repeated as often as needed (for throughput, not accuracy)."""
    reps = math.ceil(n / len(data.train_y))
    x = np.concatenate([data.train_x] * reps)[:n]
    y = np.concatenate([data.train_y] * reps)[:n]
    return dataclasses.replace(data.without_test(), train_x=x, train_y=y)


def machine_info() -> dict[str, Any]:
    import ray
    import timm
    import torch
    import torchvision

    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": model, "cpu_count": os.cpu_count(), "cpus_usable": usable,
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm.__version__, "ray": ray.__version__, "platform": platform.platform(),
        "cuda": torch.cuda.is_available(),
        # other work on the machine skews every figure: the 1-minute load average when the run starts
        "load_average_start": list(os.getloadavg()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def start_ray(num_cpus: int = 2) -> float:
    """One quiet local Ray instance for the whole benchmark; returns its start time in seconds."""
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no Tune console output besides ours
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet_logging()
    t0 = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
             configure_logging=True)
    return time.perf_counter() - t0


def quiet_logging() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("ray", "ray.tune", "ray.train", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="ray")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _fit(trainable, *, param_space: dict, tune_config, run_config) -> tuple[Any, float]:
    """Run a Ray Tune experiment; (ResultGrid, wall seconds from building the Tuner to fit's return)."""
    grid, _, wall = _fit_timed(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
    return grid, wall


def _fit_timed(trainable, *, param_space: dict, tune_config, run_config) -> tuple[Any, float, float]:
    """_fit, also returning the wall-clock (time.time) start, to place trial timestamps."""
    from ray import tune

    t0_wall, t0 = time.time(), time.perf_counter()
    grid = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config).fit()
    wall = time.perf_counter() - t0
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} benchmark trial(s) failed; the first: {errors[0]}")
    return grid, t0_wall, wall


def _spec(storage: str, name: str, *, num_samples: int, max_epochs: int, sets: list[str], concurrency: int):
    """A real sweep spec (resnet_rsb on digits, pinned by `sets`), so tune_config/run_config are the sweep's own."""
    from tuner.spec import build_spec

    return build_spec(space="resnet_rsb", dataset="digits", num_samples=num_samples, max_epochs=max_epochs,
                      sets=sets, max_concurrent=concurrency, storage=storage, name=name, seed=0)


def _history(result) -> list[dict[str, Any]]:
    df = result.metrics_dataframe
    return [] if df is None else df.to_dict("records")


# ------------------------------------------------------------------------- 1. trainable vs bare loop


def bench_trainable_vs_bare(data, s: Settings, storage: str | None = None) -> dict[str, Any]:
    """Training images/s of one epoch in the loop trials run vs a bare PyTorch loop, same work.

    ours: trainables.classify.train_epochs (BatchAugment crop+flip+normalise, timm AdamW + per-step cosine
    schedule, loss accumulated on device), driven here without Ray; and, when `storage` is given, the
    images_per_s that a real 1-trial Ray Tune run of train_classifier reports (data via tune.with_parameters,
    1 CPU, so 1 torch thread, checkpoint every epoch), against bare epochs run in lockstep with its epochs.
    bare: a for-loop over batches made once beforehand, the same model from trainables.models.create_model
    and the same initial weights, torch.optim.AdamW, cross-entropy, and a per-image random crop (pad 4) and
    flip done simply with slicing. Same images, batch size and torch threads. The two loops alternate epoch
    by epoch (after one warm-up epoch each) and the medians are compared.
    With `small_rounds`, the same comparison for a small model too, where per-step costs outside the model
    (augmentation, optimizer bookkeeping) weigh more.
    """
    from trainables.config import TrialConfig

    def config(width: float, batch: int, rounds: int) -> TrialConfig:
        return TrialConfig.from_dict({
            "model": s.train_model, "width": width, "batch_size": batch, "max_epochs": rounds + 1,
            "val_every": 10_000, "opt": "adamw", "lr": 1e-3, "weight_decay": 0.05, "crop_padding": 4,
            "hflip": True, "seed": 0})

    subset = _subset(data, s.train_images)
    cfg = config(s.train_width, s.train_batch, s.train_rounds)
    with torch_threads(s.threads):
        bare_epoch = _bare_loop(subset, cfg)
        ours, bare = _interleave(cfg, subset, bare_epoch, s.train_rounds)
    ratios = [o / b for o, b in zip(ours, bare)]
    out: dict[str, Any] = {
        "model": f"{s.train_model} width {s.train_width:g} at 32 px", "images": _whole_batches(subset, cfg),
        "batch_size": s.train_batch, "torch_threads": s.threads, "timed_epochs": s.train_rounds,
        "ours_images_per_s": _median(ours), "bare_images_per_s": _median(bare),
        # the median of the per-epoch ratios: each pairs epochs run back to back, so slow drifts of other load
        # on the machine cancel out
        "ratio": _median(ratios),
        "ratio_min": min(ratios), "ratio_max": max(ratios), "target_ratio": 0.95,
    }
    if storage is not None:
        with torch_threads(s.threads):
            out.update(_ray_trial_throughput(subset, cfg, s, storage, bare_epoch))
    out["met"] = out["ratio"] >= 0.95 and out.get("ray_trial_ratio", 1.0) >= 0.95
    if s.small_rounds:
        small_cfg = config(s.small_width, s.small_batch, s.small_rounds)
        small = _subset(data, s.small_images)
        with torch_threads(s.threads):
            small_ours, small_bare = _interleave(small_cfg, small, _bare_loop(small, small_cfg), s.small_rounds)
        out["small_model"] = {
            "model": f"{s.train_model} width {s.small_width:g} at 32 px", "images": _whole_batches(small, small_cfg),
            "batch_size": s.small_batch, "timed_epochs": s.small_rounds,
            "ours_images_per_s": _median(small_ours), "bare_images_per_s": _median(small_bare),
            "ratio": _median([o / b for o, b in zip(small_ours, small_bare)]),
        }
    return out


def _whole_batches(subset, cfg) -> int:
    return len(subset.train_y) // cfg.batch_size * cfg.batch_size


def _bare_loop(subset, cfg) -> Callable[[], float]:
    """One epoch of the bare loop per call (returns its images/s); model and batches made once, here."""
    import torch
    import torch.nn.functional as F

    from trainables.models import create_model

    batch = cfg.batch_size
    n_batches = len(subset.train_y) // batch
    images = n_batches * batch
    mean = torch.tensor(subset.mean).view(1, 3, 1, 1)
    std = torch.tensor(subset.std).view(1, 3, 1, 1)
    x_all, y_all = torch.from_numpy(subset.train_x.copy()), torch.from_numpy(subset.train_y.copy())
    perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(0))
    batches = [(x_all[perm[i * batch:(i + 1) * batch]], y_all[perm[i * batch:(i + 1) * batch]])
               for i in range(n_batches)]
    torch.manual_seed(cfg.seed)  # the same initial weights as train_epochs builds
    model = create_model(cfg.model, subset.num_classes, image_size=32, width=cfg.width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(0)
    size = subset.image_size

    def bare_epoch() -> float:
        model.train()
        t0 = time.perf_counter()
        for x, y in batches:
            padded = F.pad(x, (4, 4, 4, 4))
            out = torch.empty_like(x)
            offsets = rng.integers(0, 9, size=(len(x), 2))
            flips = rng.random(len(x)) < 0.5
            for i in range(len(x)):
                dy, dx = offsets[i]
                crop = padded[i, :, dy:dy + size, dx:dx + size]
                out[i] = crop.flip(-1) if flips[i] else crop
            inputs = (out.float() / 255.0 - mean) / std
            loss = F.cross_entropy(model(inputs), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return images / (time.perf_counter() - t0)

    return bare_epoch


def _interleave(cfg, subset, bare_epoch: Callable[[], float], rounds: int) -> tuple[list[float], list[float]]:
    """train_epochs and the bare loop, an epoch of each in turn; the images/s of each after one warm-up epoch."""
    import torch

    from trainables.classify import train_epochs

    ours_loop = train_epochs(cfg, subset, device=torch.device("cpu"))
    ours, bare = [], []
    for r in range(rounds + 1):
        o = next(ours_loop)[0]["images_per_s"]
        b = bare_epoch()
        if r > 0:  # the first epoch of each is warm-up
            ours.append(o)
            bare.append(b)
    for _ in ours_loop:  # finish the generator (the last epoch's validation is not timed)
        pass
    return ours, bare


def _ray_trial_throughput(subset, cfg, s: Settings, storage: str, bare_epoch: Callable[[], float]) -> dict[str, Any]:
    """A real 1-trial Ray Tune run of train_classifier with the sweep's run_config (checkpoint every epoch),
    in lockstep with the bare loop: a bare epoch runs in the driver after each epoch the trial reports, while
    the trial waits in tune.report (Tune only lets it go on once the driver has processed the result)."""
    from ray import tune

    from trainables.classify import train_classifier
    from tuner.sweep import run_config

    spec = _spec(storage, "trainable_vs_bare", num_samples=1, max_epochs=s.ray_epochs, sets=[], concurrency=1)
    config = {**cfg.to_dict(), "max_epochs": s.ray_epochs, "val_every": 1}
    trainable = tune.with_resources(tune.with_parameters(train_classifier, data=subset), {"cpu": 1})
    lockstep = bare_epoch_after_each_result(bare_epoch)
    cpu0 = time.process_time()
    grid, wall = _fit(trainable, param_space=config,
                      tune_config=tune.TuneConfig(num_samples=1, metric="val_top1", mode="max", reuse_actors=True),
                      run_config=run_config(spec, [lockstep]))
    bare_cpu = sum(lockstep.seconds)  # the bare epochs ran in this process too
    bare_wall = sum(_whole_batches(subset, cfg) / rate for rate in lockstep.rates)
    driver_cpu = (time.process_time() - cpu0 - bare_cpu) / max(wall - bare_wall, 1e-9)
    rows = _history(grid[0])
    # the first epoch is warm-up; the bare epoch after trial epoch k is rates[k - 1]
    trial_rates = [r["images_per_s"] for r in rows[1:]]
    bare_rates = lockstep.rates[1:len(rows)]
    ratios = [t / b for t, b in zip(trial_rates, bare_rates)]
    return {
        "ray_trial_images_per_s": _median(trial_rates),
        "ray_trial_bare_images_per_s": _median(bare_rates),
        "ray_trial_ratio": _median(ratios), "ray_trial_ratio_min": min(ratios), "ray_trial_ratio_max": max(ratios),
        # the same epochs counted whole: training + validation + checkpoint save + report, as Tune times them
        # (time_this_iter_s runs from the driver's go-ahead to the next result, so not the bare epochs' wait)
        "ray_trial_end_to_end_images_per_s": (_whole_batches(subset, cfg) * len(rows[1:]) /
                                              sum(r["time_this_iter_s"] for r in rows[1:])),
        # where the rest of an epoch goes: validation (epoch_s less the training time), then the checkpoint save
        # and tune.report inside the trial (time_this_iter_s less epoch_s)
        "ray_trial_validation_s": _median([r["epoch_s"] - _whole_batches(subset, cfg) / r["images_per_s"]
                                           for r in rows[1:]]),
        "ray_trial_checkpoint_and_report_s": _median([r["time_this_iter_s"] - r["epoch_s"] for r in rows[1:]]),
        "ray_trial_epochs": s.ray_epochs, "ray_trial_wall_s": wall,
        "ray_driver_cpu_share": driver_cpu,  # cores the Tune driver process kept busy, bare epochs left out
    }


def bare_epoch_after_each_result(bare_epoch: Callable[[], float]):
    """A Tune callback running one bare epoch per trial result, while the trial waits for the driver; its
    `rates` (images/s) and `seconds` (CPU seconds of this process) per bare epoch. Built here so that importing
    this module does not import Ray Tune (spawned processes of the GPU measurement import it)."""
    from ray.tune import Callback

    class BareEpochAfterEachResult(Callback):
        def __init__(self) -> None:
            self.bare_epoch: Callable[[], float] | None = bare_epoch
            self.rates: list[float] = []
            self.seconds: list[float] = []

        def __getstate__(self) -> dict:
            return {"bare_epoch": None, "rates": [], "seconds": []}  # Tune pickles callbacks with its state

        def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
            if self.bare_epoch is not None:
                cpu0 = time.process_time()
                self.rates.append(self.bare_epoch())
                self.seconds.append(time.process_time() - cpu0)

    return BareEpochAfterEachResult()


# -------------------------------------------------------------------------------- 2. augmentation


class _PilDataset:
    """torchvision.datasets style (as CIFAR10): uint8 HWC array, a PIL image per item, then the transform."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def bench_augment_vs_torchvision(data, s: Settings, workers: int = 1) -> dict[str, Any]:
    """Augmented images/s: our BatchAugment vs the usual torchvision pipeline, both crop (pad 4) + flip + normalise.

    ours: a uint8 (N, 3, 32, 32) tensor, a random batch gathered by index and augmented by BatchAugment in
    one call (what each training step of a trial does), in `threads` torch threads.
    torchvision: a torchvision.datasets-style Dataset of PIL images with RandomCrop(32, padding=4),
    RandomHorizontalFlip, ToTensor, Normalize through a DataLoader(shuffle=True, num_workers=`workers`: the
    CPUs a trial holds, persistent workers), the same batch size. Both after one warm-up epoch.
    """
    import torch
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from trainables.augment import BatchAugment

    tiled = _tiled(data, s.aug_images)
    n = len(tiled.train_y)
    with torch_threads(s.threads):
        x = torch.from_numpy(tiled.train_x.copy())
        augment = BatchAugment(tiled.mean, tiled.std, crop_padding=4, hflip=True)
        generator = torch.Generator().manual_seed(0)

        def ours_epoch() -> float:
            t0 = time.perf_counter()
            order = torch.randperm(n, generator=generator)
            for start in range(0, n - s.aug_batch + 1, s.aug_batch):
                out = augment(x.index_select(0, order[start:start + s.aug_batch]), generator)
            assert out.dtype == torch.float32
            return (n // s.aug_batch) * s.aug_batch / (time.perf_counter() - t0)

        ours = [ours_epoch() for _ in range(s.aug_epochs + 1)][1:]

        breakdown = _augment_breakdown(x, augment, s.aug_batch)

    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(tiled.mean, tiled.std)])
    dataset = _PilDataset(np.ascontiguousarray(tiled.train_x.transpose(0, 2, 3, 1)), tiled.train_y, transform)
    loader = DataLoader(dataset, batch_size=s.aug_batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    tv = []
    for epoch in range(s.aug_epochs + 1):
        t0 = time.perf_counter()
        count = sum(len(images) for images, _ in loader)
        if epoch > 0:
            tv.append(count / (time.perf_counter() - t0))
    del loader
    return {
        "images": n, "batch_size": s.aug_batch, "torch_threads": s.threads, "dataloader_workers": workers,
        "ours_images_per_s": _median(ours), "torchvision_images_per_s": _median(tv),
        "ratio": _median(ours) / _median(tv), "target_ratio": 10.0, "met": _median(ours) / _median(tv) >= 10.0,
        "breakdown_us_per_batch": breakdown,
    }


def _augment_breakdown(x, augment, batch: int, calls: int = 50) -> dict[str, float]:
    """Microseconds per batch of each step of BatchAugment's path, median of `calls`."""
    import torch

    from trainables.augment import random_crop, random_crop_flip, random_hflip

    generator = torch.Generator().manual_seed(1)
    idx = torch.randperm(len(x), generator=generator)[:batch]
    images = x[idx]
    cropped = random_crop(images, augment.crop_padding, generator)

    def us(fn) -> float:
        fn()
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e6 * _median(times)

    return {
        "batch_gather_advanced_indexing": us(lambda: x[idx]),  # train_x[idx], as train_epochs gathers a batch
        "batch_gather_index_select": us(lambda: x.index_select(0, idx)),
        "random_crop_flip": us(lambda: random_crop_flip(images, augment.crop_padding, True, generator)),
        # the two steps apart, and the 4-D advanced-indexing crop that the flat gather replaced (for comparison)
        "random_crop": us(lambda: random_crop(images, augment.crop_padding, generator)),
        "random_hflip": us(lambda: random_hflip(cropped, generator)),
        "crop_4d_indexing_before": us(lambda: _crop_4d_indexing(images, augment.crop_padding, generator)),
        "normalize": us(lambda: augment.normalize(cropped)),
        "batch_augment_call": us(lambda: augment(images, generator)),
    }


def _crop_4d_indexing(images, padding: int, generator=None):
    """The random crop as first written (a 4-D advanced-indexing gather): kept to show what the flat gather saves."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator)
    rows = (dy + torch.arange(h))[:, None, :, None]
    cols = (dx + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(b)[:, None, None, None], torch.arange(images.shape[1])[None, :, None, None], rows, cols]


# --------------------------------------------------------------------------- 3. per-trial overhead


def _fixed_work(iters: int) -> float:
    """The same CPU work every time (1 torch thread); returns the seconds it took."""
    import torch

    torch.set_num_threads(1)
    a = torch.full((128, 128), 0.01)
    t0 = time.perf_counter()
    for _ in range(iters):
        a = torch.tanh(a @ a)
    return time.perf_counter() - t0


def calibrate_work(seconds: float) -> int:
    """Iterations of _fixed_work taking about `seconds` here."""
    with torch_threads(1):
        _fixed_work(20)
        per_iter = _fixed_work(200) / 200
    return max(1, round(seconds / per_iter))


def trivial_trial(config: dict[str, Any]) -> None:
    """Plain Ray Tune style: imports torch itself (a fresh process pays for it), fixed work, one report."""
    import torch  # noqa: F401  (the point: a per-trial process imports it)
    from ray import tune

    t_start = time.time()
    work_s = _fixed_work(config["work_iters"])
    tune.report({"epoch": 1, "val_top1": 0.0, "work_s": work_s, "pid": os.getpid(), "t_start": t_start,
                 "t_end": time.time()})


def trivial_trial_with_data(config: dict[str, Any], data, work_iters: int) -> None:
    """Our style: the data set arrives through tune.with_parameters (the object store), same fixed work."""
    import torch  # noqa: F401
    from ray import tune

    t_start = time.time()
    assert data.train_x.size > 0
    work_s = _fixed_work(work_iters)
    tune.report({"epoch": 1, "val_top1": 0.0, "work_s": work_s, "pid": os.getpid(), "t_start": t_start,
                 "t_end": time.time()})


def bench_per_trial_overhead(data, s: Settings, storage: str) -> dict[str, Any]:
    """Seconds each trial adds to a sweep beyond its own work: (wall - sum(work) / concurrency) / trials.

    `overhead_trials` trials, `concurrency` at a time with 1 CPU each, wall from building the Tuner to the
    return of fit() (Ray itself already running). Three sweeps:
      naive_defaults  a trivial fixed-work function trainable that imports torch, plain Ray Tune defaults:
                      TuneConfig(reuse_actors=False): a fresh worker process per trial, default RunConfig;
      ours_trivial    the same fixed work with our configuration: tuner.sweep.tune_config (OptunaSearch + ASHA,
                      reuse_actors=True) and run_config (checkpoint config), data via tune.with_parameters;
      ours_trainable  the real train_classifier, 1 epoch on tiny data (cnn_basic width 0.25 at 16 px), our
                      configuration; its work is the epoch_s it reports (training + validation), so model
                      building, timm's recipe, the checkpoint and the report count as overhead.
    """
    from ray import tune

    from trainables.classify import train_classifier
    from tuner.sweep import run_config, tune_config

    n, conc = s.overhead_trials, s.concurrency
    iters = calibrate_work(s.work_s)
    out: dict[str, Any] = {"trials": n, "concurrency": conc, "work_iters": iters, "target_s": 1.0}

    def summarize(grid, t0: float, wall: float, work_key: str) -> dict[str, Any]:
        rows = [_history(r) for r in grid]
        work = [sum(row[work_key] for row in history) for history in rows]
        ideal = sum(work) / conc
        summary = {"per_trial_s": (wall - ideal) / n, "wall_s": wall, "ideal_s": ideal,
                   "mean_work_s": sum(work) / len(work)}
        finals = [history[-1] for history in rows if history and "t_start" in history[-1]]
        if finals:  # a timeline of the trivial trials: start-up, turnaround between trials, tear-down
            summary["worker_processes"] = len({f["pid"] for f in finals})
            summary["first_trial_start_s"] = min(f["t_start"] for f in finals) - t0
            summary["last_trial_end_to_fit_return_s"] = t0 + wall - max(f["t_end"] for f in finals)
            gaps = []
            for pid in {f["pid"] for f in finals}:
                mine = sorted((f for f in finals if f["pid"] == pid), key=lambda f: f["t_start"])
                gaps += [b["t_start"] - a["t_end"] for a, b in zip(mine, mine[1:])]
            if gaps:  # from one trial's report to the next trial's start in the same process
                summary["turnaround_same_process_s"] = _median(gaps)
        return summary

    grid, t0, wall = _fit_timed(
        tune.with_resources(trivial_trial, {"cpu": 1}), param_space={"work_iters": iters},
        tune_config=tune.TuneConfig(num_samples=n, max_concurrent_trials=conc, reuse_actors=False),
        run_config=tune.RunConfig(name="naive", storage_path=storage, verbose=0))
    out["naive_defaults"] = summarize(grid, t0, wall, "work_s")

    spec = _spec(storage, "ours_trivial", num_samples=n, max_epochs=1, sets=["model=cnn_basic", "width=0.25"],
                 concurrency=conc)
    trainable = tune.with_resources(
        tune.with_parameters(trivial_trial_with_data, data=data.without_test(), work_iters=iters), {"cpu": 1})
    grid, t0, wall = _fit_timed(trainable, param_space=spec.param_space(), tune_config=tune_config(spec),
                                run_config=run_config(spec, []))
    out["ours_trivial"] = summarize(grid, t0, wall, "work_s")

    tiny = _subset(data, s.overhead_train_images, max(10, s.overhead_train_images // 2))
    spec = _spec(storage, "ours_trainable", num_samples=n, max_epochs=1, sets=["model=cnn_basic", "width=0.25"],
                 concurrency=conc)
    trainable = tune.with_resources(tune.with_parameters(train_classifier, data=tiny), {"cpu": 1})
    grid, t0, wall = _fit_timed(trainable, param_space=spec.param_space(), tune_config=tune_config(spec),
                                run_config=run_config(spec, []))
    summary = summarize(grid, t0, wall, "epoch_s")
    # Tune's time_this_iter_s of the first report runs from the trainable's start: setup = that - epoch_s
    firsts = [_history(r)[0] for r in grid]
    summary["in_trial_setup_s"] = sum(f["time_this_iter_s"] - f["epoch_s"] for f in firsts) / len(firsts)
    summary["data"] = f"{len(tiny.train_y)} train / {len(tiny.val_y)} val digits images, 1 epoch"
    out["ours_trainable"] = summary

    out["ours_s"] = out["ours_trivial"]["per_trial_s"]
    out["naive_s"] = out["naive_defaults"]["per_trial_s"]
    out["ratio_naive_over_ours"] = out["naive_s"] / max(out["ours_s"], 1e-9)
    out["met"] = out["ours_s"] <= 1.0 and out["ours_trainable"]["per_trial_s"] <= 1.0
    out["breakdown"] = overhead_breakdown(s, storage)
    return out


class _ProbeActor:
    def ping(self) -> int:
        return os.getpid()

    def import_torch(self) -> float:
        t0 = time.perf_counter()
        import torch  # noqa: F401

        return time.perf_counter() - t0


def report_probe(config: dict[str, Any]) -> None:
    """Times tune.report inside a trial: plain, and with a real trial checkpoint (saved as train_classifier does)."""
    import tempfile

    import torch
    from ray import tune

    from trainables.classify import save_atomic
    from trainables.config import TrialConfig
    from trainables.models import create_model
    from trainables.recipe import create_recipe

    calls = config["calls"]
    cfg = TrialConfig.from_dict({"model": "cnn_basic", "width": 0.25, "max_epochs": 1})
    model = create_model(cfg.model, 10, image_size=16, width=cfg.width)
    recipe = create_recipe(model, cfg, 10, 10)
    model(torch.zeros(2, 3, 16, 16)).sum().backward()
    recipe.optimizer.step()  # optimizer state exists, as in a real checkpoint
    state = {"model": model.state_dict(), "recipe": recipe.state_dict(), "config": cfg.to_dict()}
    plain, save, with_ckpt = [], [], []
    epoch = 0
    for _ in range(calls):
        epoch += 1
        t0 = time.perf_counter()
        tune.report({"epoch": epoch, "val_top1": 0.0})
        plain.append(time.perf_counter() - t0)
    for i in range(calls):
        epoch += 1
        with tempfile.TemporaryDirectory() as ckpt_dir:
            t0 = time.perf_counter()
            save_atomic(state, os.path.join(ckpt_dir, "checkpoint.pt"))
            t1 = time.perf_counter()
            tune.report({"epoch": epoch, "val_top1": float(i)}, checkpoint=tune.Checkpoint.from_directory(ckpt_dir))
            with_ckpt.append(time.perf_counter() - t1)
            save.append(t1 - t0)
    tune.report({"epoch": epoch + 1, "val_top1": -1.0, "report_s": _median(plain), "save_s": _median(save),
                 "report_with_checkpoint_s": _median(with_ckpt)})


def _import_time(code: str, repeats: int = 2) -> float:
    """Best-of wall time of `python -c code` in a fresh process."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def overhead_breakdown(s: Settings, storage: str) -> dict[str, Any]:
    """Where per-trial time goes: process and import costs, Ray actor start, tune.report and checkpoint cost."""
    import ray
    from ray import tune

    from tuner.sweep import run_config

    out: dict[str, Any] = {"python_start_s": None, "import_torch_s": None, "import_trainable_stack_s": None}
    if s.import_repeats:
        python = _import_time("pass", s.import_repeats)
        out["python_start_s"] = python
        out["import_torch_s"] = _import_time("import torch", s.import_repeats) - python
        out["import_trainable_stack_s"] = _import_time(
            "import torch, timm, timm.optim, timm.scheduler, timm.loss, trainables.classify, ray.tune",
            s.import_repeats) - python
    probe = ray.remote(num_cpus=1)(_ProbeActor)
    starts, imports = [], []
    for _ in range(s.actor_probes):
        t0 = time.perf_counter()
        actor = probe.remote()
        ray.get(actor.ping.remote())
        starts.append(time.perf_counter() - t0)
        imports.append(ray.get(actor.import_torch.remote()))
        ray.kill(actor)
    out["ray_actor_start_s"] = _median(starts)
    out["import_torch_in_actor_s"] = _median(imports)

    spec = _spec(storage, "report_probe", num_samples=1, max_epochs=1, sets=[], concurrency=1)
    grid, _ = _fit(tune.with_resources(report_probe, {"cpu": 1}), param_space={"calls": s.report_calls},
                   tune_config=tune.TuneConfig(num_samples=1, metric="val_top1", mode="max"),
                   run_config=run_config(spec, []))
    last = grid[0].metrics
    out["tune_report_s"] = last["report_s"]
    out["checkpoint_save_s"] = last["save_s"]
    out["tune_report_with_checkpoint_s"] = last["report_with_checkpoint_s"]
    return out


# ------------------------------------------------------------------------------- 4. ASHA vs random


def bench_asha_vs_random(data, s: Settings, storage: str) -> dict[str, Any]:
    """Epochs TPE + ASHA spends vs full-budget random search with as many trials, and their best val top-1.

    Both sweep the resnet_rsb space on digits with model=cnn_basic width 0.25 at 16 px (the space's digits
    settings), `asha_trials` trials of up to `asha_epochs` epochs, `concurrency` at a time, the real trainable.
    ours: tuner.sweep.tune_config (OptunaSearch TPE + ASHAScheduler(time_attr='epoch', the space's grace period
    and reduction factor)); random: BasicVariantGenerator, FIFO, every trial runs all epochs.
    Noise: the validation split is small, so each winner's config is retrained with `seed_repeats` other seeds
    for the full budget; the spread of those, the top-3 spread and the binomial standard error of the
    validation accuracy are reported, and the difference is called 'within noise' unless it exceeds twice
    the combined seed-to-seed standard deviation (binomial standard error when no repeats).
    """
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from trainables.classify import train_classifier
    from tuner.sweep import run_config, tune_config

    splits = _subset(data, s.asha_train_images) if s.asha_train_images else data.without_test()
    sets = ["model=cnn_basic", "width=0.25"]
    trainable = tune.with_resources(tune.with_parameters(train_classifier, data=splits), {"cpu": 1})
    sweeps = {}
    for kind in ("asha", "random"):
        spec = _spec(storage, f"{kind}_sweep", num_samples=s.asha_trials, max_epochs=s.asha_epochs, sets=sets,
                     concurrency=s.concurrency)
        if kind == "asha":
            tconf = tune_config(spec)
        else:
            space = spec.search_space
            tconf = tune.TuneConfig(metric=space.metric, mode=space.mode,
                                    search_alg=BasicVariantGenerator(random_state=spec.seed),
                                    scheduler=FIFOScheduler(), num_samples=spec.num_samples,
                                    max_concurrent_trials=spec.max_concurrent, reuse_actors=True)
        grid, wall = _fit(trainable, param_space=spec.param_space(), tune_config=tconf,
                          run_config=run_config(spec, []))
        trials = []
        for result in grid:
            history = _history(result)
            trials.append({"epochs": int(max(r["epoch"] for r in history)),
                           "best_val_top1": float(max(r["val_top1"] for r in history)), "config": result.config})
        trials.sort(key=lambda t: -t["best_val_top1"])
        sweeps[kind] = {"trials": trials, "wall_s": wall, "spec": spec}

    n_val = len(splits.val_y)
    out: dict[str, Any] = {
        "space": f"resnet_rsb on digits ({len(splits.train_y)} train / {n_val} val images), model=cnn_basic "
                 f"width=0.25 image_size=16 batch 32",
        "trials": s.asha_trials, "max_epochs": s.asha_epochs, "concurrency": s.concurrency, "val_images": n_val,
        "asha_settings": dataclasses.asdict(sweeps["asha"]["spec"].search_space.asha), "seed_repeats": s.seed_repeats,
    }
    for kind, sweep in sweeps.items():
        trials = sweep["trials"]
        best = trials[0]["best_val_top1"]
        top3 = [t["best_val_top1"] for t in trials[:3]]
        winner_seeds = [best] + _retrain(trials[0]["config"], splits, s.seed_repeats)
        out[kind] = {
            "epochs_used": sum(t["epochs"] for t in trials), "wall_s": sweep["wall_s"],
            "trials_stopped_early": sum(t["epochs"] < s.asha_epochs for t in trials),
            "best_val_top1": best, "top3_val_top1": top3, "top3_std": _std(top3),
            "binomial_se": 100 * math.sqrt(max(best, 1e-9) / 100 * (1 - best / 100) / n_val),
            "winner_val_top1_by_seed": winner_seeds, "winner_seed_mean": float(np.mean(winner_seeds)),
            "winner_seed_std": _std(winner_seeds),
        }
    asha, rand = out["asha"], out["random"]
    out["epoch_fraction"] = asha["epochs_used"] / rand["epochs_used"]
    out["wall_fraction"] = asha["wall_s"] / rand["wall_s"]
    out["best_minus_random_best"] = asha["best_val_top1"] - rand["best_val_top1"]
    out["winner_seed_mean_difference"] = asha["winner_seed_mean"] - rand["winner_seed_mean"]
    if s.seed_repeats > 0:
        noise = math.hypot(asha["winner_seed_std"], rand["winner_seed_std"])
        out["noise_judged_by"] = ("2 x combined std of each winner's best val top-1 over seeds "
                                  f"(sweep seed + {s.seed_repeats} retrainings)")
    else:
        noise = math.hypot(asha["binomial_se"], rand["binomial_se"])
        out["noise_judged_by"] = f"2 x combined binomial standard error on {n_val} validation images"
    out["noise_pp"] = 2 * noise
    out["difference_within_noise"] = abs(out["best_minus_random_best"]) <= 2 * noise
    asha_cfg = sweeps["asha"]["spec"].search_space.asha
    out["expected_epoch_fraction"] = simulate_asha_fraction(s.asha_trials, s.asha_epochs, asha_cfg.grace_period,
                                                            asha_cfg.reduction_factor, s.concurrency)
    out["target_epoch_fraction"] = 0.4
    out["met"] = out["epoch_fraction"] <= 0.4
    return out


def simulate_asha_fraction(trials: int, max_t: int, grace: int, rf: int, concurrency: int, sweeps: int = 300,
                           seed: int = 0) -> dict[str, float] | str:
    """Epoch fraction that Ray's own async-ASHA rung logic gives on synthetic sweeps of this size.

    Each trial has a random quality, a rising learning curve and per-epoch noise; `concurrency` trials run at a
    time with epochs of random length. Tells what fraction this size allows at all (one real sweep varies a lot),
    e.g. the first trial to reach a rung is never stopped, so few trials leave little to save.
    """
    import heapq

    try:
        from ray.tune.schedulers import TrialScheduler
        from ray.tune.schedulers.async_hyperband import _Bracket  # private: absent in some Ray version
    except ImportError:
        return "not available in this Ray version"

    class _Trial:
        def __init__(self, i: int) -> None:
            self.trial_id = str(i)

    rng = np.random.default_rng(seed)
    fractions = []
    for _ in range(sweeps):
        bracket = _Bracket(min_t=grace, max_t=max_t, reduction_factor=rf, s=0, stop_last_trials=True)
        quality = rng.normal(size=trials)
        epochs = [0] * trials
        running = [(rng.uniform(0.9, 1.1), i) for i in range(min(concurrency, trials))]
        heapq.heapify(running)
        started = len(running)
        while running:
            now, i = heapq.heappop(running)
            epochs[i] += 1
            reward = quality[i] + 0.3 * math.log(epochs[i]) + rng.normal(scale=0.1)
            stop = bracket.on_result(_Trial(i), epochs[i], reward) == TrialScheduler.STOP or epochs[i] >= max_t
            if not stop:
                heapq.heappush(running, (now + rng.uniform(0.9, 1.1), i))
            elif started < trials:
                heapq.heappush(running, (now + rng.uniform(0.9, 1.1), started))
                started += 1
        fractions.append(sum(epochs) / (trials * max_t))
    return {"mean": float(np.mean(fractions)), "p10": float(np.percentile(fractions, 10)),
            "p90": float(np.percentile(fractions, 90)), "sweeps": sweeps}


def _retrain(config: dict[str, Any], splits, repeats: int) -> list[float]:
    """Best val top-1 of `config` trained for its full budget with seeds 1..repeats (plain loop, no Ray)."""
    import torch

    from trainables.classify import train_epochs
    from trainables.config import TrialConfig

    scores = []
    with torch_threads(1):  # as in a trial; more threads only fight other load for the cores
        for seed in range(1, repeats + 1):
            cfg = TrialConfig.from_dict({**config, "seed": seed})
            history = [m for m, _ in train_epochs(cfg, splits, device=torch.device("cpu"))]
            scores.append(float(history[-1]["best_val_top1"]))
    return scores


# ---------------------------------------------------------------------------------------------- 5. GPU


def _gpu_config(model: str, s: Settings, epochs: int):
    from trainables.config import TrialConfig

    return TrialConfig.from_dict({"model": model, "batch_size": s.gpu_batch, "max_epochs": epochs,
                                  "val_every": 10_000, "opt": "adamw", "lr": 1e-3, "amp": True,
                                  "channels_last": True, "crop_padding": 4, "hflip": True})


def _gpu_throughput(model: str, data, s: Settings, device) -> float:
    """Median training images/s of train_epochs on `device` (data on the device, bf16 autocast and
    channels_last on CUDA, as a trial holding a GPU trains), after one warm-up epoch."""
    from trainables.classify import train_epochs

    rates = [m["images_per_s"] for m, _ in train_epochs(_gpu_config(model, s, s.gpu_epochs), data, device=device)]
    return _median(rates[1:])


def _packing_worker(model: str, s: Settings, device: str, barrier, results) -> None:
    """One of k packed trials: warm up, wait for the others, then train and report images/s."""
    import torch

    from trainables.classify import train_epochs
    from trainables.data import load_dataset

    torch.set_num_threads(1)
    data = _tiled(load_dataset("digits"), s.gpu_images)
    loop = train_epochs(_gpu_config(model, s, s.gpu_epochs), data, device=torch.device(device))
    next(loop)  # warm-up epoch (cuDNN autotuning, allocator)
    barrier.wait()
    rates = [m["images_per_s"] for m, _ in loop]
    results.put(_median(rates))


def _collect(results, procs, timeout: float = 600.0) -> list[float]:
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
    tiled = _tiled(data, s.gpu_images)
    registered = set(list_models())
    per_model = {}
    for model in s.gpu_models:
        if model in registered:
            per_model[model] = _gpu_throughput(model, tiled, s, dev)
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    aggregate = {}
    for k in s.packing:
        barrier, results = ctx.Barrier(k), ctx.Queue()
        procs = [ctx.Process(target=_packing_worker, args=(s.packing_model, s, device, barrier, results))
                 for _ in range(k)]
        for p in procs:
            p.start()
        aggregate[str(k)] = sum(_collect(results, procs))
    packing = {"model": s.packing_model, "batch_size": s.gpu_batch,
               "aggregate_images_per_s": aggregate,
               "speedup": {k: v / aggregate[str(s.packing[0])] for k, v in aggregate.items()}}
    return {"device": str(dev), "batch_size": s.gpu_batch, "images_per_s": per_model}, packing


# ------------------------------------------------------------------------------------------------ run


def run(settings: Settings, only: tuple[str, ...] = FIGURES, console=None) -> dict[str, Any]:
    """Every measurement in one process, one Ray instance; returns the JSON-ready results."""
    import ray
    import torch
    from rich.console import Console

    from trainables.data import load_dataset

    console = console or Console(stderr=True)
    t_start = time.perf_counter()
    result: dict[str, Any] = {"machine": machine_info(), "settings": dataclasses.asdict(settings)}
    data = load_dataset("digits")
    storage = tempfile.mkdtemp(prefix="sweeps-bench-")
    needs_ray = {"trainable_vs_bare", "per_trial_overhead_s", "asha"} & set(only)
    try:
        result["ray_start_s"] = start_ray(settings.concurrency) if needs_ray else None

        def step(key: str, what: str, fn: Callable[[], Any]) -> Any:
            if key not in only:
                return SKIPPED
            console.print(f"[dim]measuring {what} ...[/dim]")
            t0 = time.perf_counter()
            value = fn()
            console.print(f"[dim]  done in {time.perf_counter() - t0:.1f} s[/dim]")
            return value

        result["trainable_vs_bare"] = step("trainable_vs_bare", "trainable vs bare PyTorch loop",
                                           lambda: bench_trainable_vs_bare(data, settings, storage))
        result["augment_vs_torchvision"] = step("augment_vs_torchvision", "BatchAugment vs torchvision",
                                                lambda: bench_augment_vs_torchvision(data, settings))
        result["per_trial_overhead_s"] = step("per_trial_overhead_s", "per-trial overhead of Ray Tune sweeps",
                                              lambda: bench_per_trial_overhead(data, settings, storage))
        asha = step("asha", "TPE + ASHA vs random search", lambda: bench_asha_vs_random(data, settings, storage))
        if isinstance(asha, dict):
            result["asha_epoch_fraction"] = asha["epoch_fraction"]
            result["asha_best_minus_random_best"] = asha["best_minus_random_best"]
        else:
            result["asha_epoch_fraction"] = result["asha_best_minus_random_best"] = asha
        result["asha_details"] = asha
        if "gpu" in only and torch.cuda.is_available():
            gpu, packing = step("gpu", "GPU throughput and packing", lambda: bench_gpu(data, settings))
        else:
            gpu = packing = NOT_MEASURED_NO_GPU if "gpu" in only else SKIPPED
        result["gpu_images_per_s"], result["packing_speedup"] = gpu, packing
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
    result["total_wall_s"] = time.perf_counter() - t_start
    result["machine"]["load_average_end"] = list(os.getloadavg())
    return result


def print_report(result: dict[str, Any], console) -> None:
    """The figures as rich tables: headline figures with targets, then the detail behind each."""
    from rich.table import Table

    m = result["machine"]
    console.print(f"[bold]sweeps benchmark[/bold] ({result['settings']['name']})  {m['date']}  load average "
                  f"{m['load_average_start'][0]:.2f} at start, {m.get('load_average_end', [math.nan])[0]:.2f} at end")
    console.print(f"{m['cpu_model']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable), "
                  f"{m.get('gpu', 'no GPU')}; Python {m['python']}, torch {m['torch']}, torchvision "
                  f"{m['torchvision']}, timm {m['timm']}, Ray {m['ray']}")
    if result.get("ray_start_s") is not None:
        console.print(f"Ray start (once, not in any figure): {result['ray_start_s']:.1f} s")

    def f(x: Any, fmt: str = ".3g") -> str:
        return format(x, fmt) if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)

    def met(ok: Any) -> str:
        return "[green]yes[/green]" if ok is True else "[red]no[/red]" if ok is False else "-"

    table = Table(title="Figures (ratio = ours / baseline)")
    for col in ("figure", "ours", "baseline", "ratio", "target", "met"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    tb = result["trainable_vs_bare"]
    if isinstance(tb, dict):
        table.add_row("trainable_vs_bare: train_epochs vs bare loop, images/s", f(tb["ours_images_per_s"], ".1f"),
                      f(tb["bare_images_per_s"], ".1f"), f(tb["ratio"], ".3f"), ">= 0.95", met(tb["ratio"] >= 0.95))
        if "ray_trial_images_per_s" in tb:
            table.add_row("trainable_vs_bare: Ray Tune trial vs bare loop, images/s",
                          f(tb["ray_trial_images_per_s"], ".1f"), f(tb["ray_trial_bare_images_per_s"], ".1f"),
                          f(tb["ray_trial_ratio"], ".3f"), ">= 0.95", met(tb["ray_trial_ratio"] >= 0.95))
        if "small_model" in tb:
            sm = tb["small_model"]
            table.add_row(f"  (small model: {sm['model']}, batch {sm['batch_size']})",
                          f(sm["ours_images_per_s"], ".0f"), f(sm["bare_images_per_s"], ".0f"), f(sm["ratio"], ".3f"),
                          "", "-")
    else:
        table.add_row("trainable_vs_bare", tb, "", "", ">= 0.95", "-")
    av = result["augment_vs_torchvision"]
    if isinstance(av, dict):
        table.add_row("augment_vs_torchvision: images/s", f(av["ours_images_per_s"], ".0f"),
                      f(av["torchvision_images_per_s"], ".0f"), f(av["ratio"], ".1f"), ">= 10", met(av["met"]))
    else:
        table.add_row("augment_vs_torchvision", av, "", "", ">= 10", "-")
    po = result["per_trial_overhead_s"]
    if isinstance(po, dict):
        table.add_row("per_trial_overhead_s: trivial trial, ours vs naive defaults",
                      f(po["ours_s"], ".2f"), f(po["naive_s"], ".2f"), f(po["ours_s"] / po["naive_s"], ".2f"),
                      "<= 1.0 s", met(po["ours_s"] <= 1.0))
        table.add_row("per_trial_overhead_s: our trainable (tiny data), ours config",
                      f(po["ours_trainable"]["per_trial_s"], ".2f"), "", "", "<= 1.0 s",
                      met(po["ours_trainable"]["per_trial_s"] <= 1.0))
    else:
        table.add_row("per_trial_overhead_s", po, "", "", "<= 1.0 s", "-")
    ad = result["asha_details"]
    if isinstance(ad, dict):
        table.add_row("asha_epoch_fraction: epochs TPE+ASHA vs random", str(ad["asha"]["epochs_used"]),
                      str(ad["random"]["epochs_used"]), f(ad["epoch_fraction"], ".3f"), "<= 0.4",
                      met(ad["epoch_fraction"] <= 0.4))
        table.add_row("asha_best_minus_random_best: best val top-1 (pp)", f(ad["asha"]["best_val_top1"], ".1f"),
                      f(ad["random"]["best_val_top1"], ".1f"), f(ad["best_minus_random_best"], "+.1f"),
                      f"noise ±{ad['noise_pp']:.1f}", "within noise" if ad["difference_within_noise"] else
                      ("better" if ad["best_minus_random_best"] > 0 else "worse"))
    else:
        table.add_row("asha_epoch_fraction", ad, "", "", "<= 0.4", "-")
    gpu = result["gpu_images_per_s"]
    if isinstance(gpu, dict):
        for model, rate in gpu["images_per_s"].items():
            table.add_row(f"gpu_images_per_s: {model}", f(rate, ".0f"), "", "", "", "-")
        for k, speedup in result["packing_speedup"]["speedup"].items():
            table.add_row(f"packing_speedup: {k} trials/GPU", f(result['packing_speedup']['aggregate_images_per_s']
                                                                 [k], ".0f"), "", f(speedup, ".2f"), "", "-")
    else:
        table.add_row("gpu_images_per_s / packing_speedup", gpu, "", "", "", "-")
    console.print(table)

    if isinstance(tb, dict):
        console.print(f"trainable_vs_bare: {tb['model']}, {tb['images']} images, batch {tb['batch_size']}, "
                      f"{tb['torch_threads']} torch thread(s), {tb['timed_epochs']} interleaved epochs; per-epoch "
                      f"ratio {tb['ratio_min']:.3f}-{tb['ratio_max']:.3f}"
                      + (f"; Ray trial: epochs in lockstep with bare epochs, per-epoch ratio "
                         f"{tb['ray_trial_ratio_min']:.3f}-{tb['ray_trial_ratio_max']:.3f}; counted whole (train + "
                         f"validation + checkpoint + report) {tb['ray_trial_end_to_end_images_per_s']:.1f} images/s "
                         f"(validation {tb['ray_trial_validation_s']:.3f} s, checkpoint + report "
                         f"{tb['ray_trial_checkpoint_and_report_s']:.3f} s per epoch); "
                         f"Tune driver busy {100 * tb['ray_driver_cpu_share']:.0f} % of a core"
                         if "ray_trial_images_per_s" in tb else ""))
    if isinstance(av, dict):
        b = av["breakdown_us_per_batch"]
        console.print(f"augment, µs per batch of {av['batch_size']} on {av['torch_threads']} thread(s): BatchAugment "
                      f"{b['batch_augment_call']:.0f} = random_crop_flip {b['random_crop_flip']:.0f} + normalize "
                      f"{b['normalize']:.0f} (crop alone {b['random_crop']:.0f}, as a 4-D indexing gather "
                      f"{b['crop_4d_indexing_before']:.0f}; a separate flip {b['random_hflip']:.0f}); batch gather "
                      f"index_select {b['batch_gather_index_select']:.0f} vs train_x\\[idx] "
                      f"{b['batch_gather_advanced_indexing']:.0f}")
    if isinstance(po, dict):
        detail = Table(title=f"Per-trial overhead: {po['trials']} trials, {po['concurrency']} at a time")
        for col in ("sweep", "wall s", "ideal s", "work/trial s", "overhead/trial s", "processes"):
            detail.add_column(col, justify="left" if col == "sweep" else "right")
        for col in ("first trial starts s", "between trials s"):
            detail.add_column(col, justify="right")
        for key in ("naive_defaults", "ours_trivial", "ours_trainable"):
            row = po[key]
            detail.add_row(key, f(row["wall_s"], ".1f"), f(row["ideal_s"], ".1f"), f(row["mean_work_s"], ".2f"),
                           f(row["per_trial_s"], ".2f"), str(row.get("worker_processes", "-")),
                           f(row.get("first_trial_start_s", "-"), ".2f"),
                           f(row.get("turnaround_same_process_s", "-"), ".3f"))
        console.print(detail)
        b = po["breakdown"]
        imports = ""
        if b["import_torch_s"] is not None:
            imports = (f"python start {b['python_start_s']:.2f} s, import torch {b['import_torch_s']:.2f} s, import "
                       f"torch+timm+trainables+ray.tune {b['import_trainable_stack_s']:.2f} s (fresh processes), ")
        console.print(
            f"where it goes: {imports}Ray actor start {b['ray_actor_start_s']:.2f} s (+ import torch in it "
            f"{b['import_torch_in_actor_s']:.2f} s); tune.report {1000 * b['tune_report_s']:.0f} ms, checkpoint "
            f"save {1000 * b['checkpoint_save_s']:.0f} ms + report with checkpoint "
            f"{1000 * b['tune_report_with_checkpoint_s']:.0f} ms per epoch; our trainable's setup inside the trial "
            f"{po['ours_trainable']['in_trial_setup_s']:.2f} s")
    if isinstance(ad, dict):
        detail = Table(title=f"TPE+ASHA vs random: {ad['space']}, {ad['trials']} trials x {ad['max_epochs']} epochs")
        for col in ("search", "epochs", "stopped early", "wall s", "best val top-1", "top-3", "top-3 std",
                    "winner over seeds", "binomial SE"):
            detail.add_column(col, justify="left" if col == "search" else "right")
        for kind in ("asha", "random"):
            r = ad[kind]
            detail.add_row(kind, str(r["epochs_used"]), str(r["trials_stopped_early"]), f(r["wall_s"], ".1f"),
                           f(r["best_val_top1"], ".1f"), ", ".join(f"{v:.1f}" for v in r["top3_val_top1"]),
                           f(r["top3_std"], ".1f"), f"{r['winner_seed_mean']:.1f} ± {r['winner_seed_std']:.1f}",
                           f(r["binomial_se"], ".1f"))
        console.print(detail)
        console.print(f"noise judged by: {ad['noise_judged_by']} = ±{ad['noise_pp']:.1f} pp; difference of the "
                      f"winners' seed means {ad['winner_seed_mean_difference']:+.1f} pp")
        sim = ad["expected_epoch_fraction"]
        if isinstance(sim, dict):
            console.print(f"Ray's async-ASHA rungs on {sim['sweeps']} synthetic sweeps of this size "
                          f"(grace {ad['asha_settings']['grace_period']}, reduction "
                          f"{ad['asha_settings']['reduction_factor']}): epoch fraction {sim['mean']:.2f} on average, "
                          f"{sim['p10']:.2f}-{sim['p90']:.2f} (10th-90th percentile)")
    console.print(f"total {result['total_wall_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuner.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--quick", action="store_true", help="smaller sizes: minutes on a 2-core CPU")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests: proves the code paths
    parser.add_argument("--only", metavar="NAME,...",
                        help=f"measure only these (of {', '.join(FIGURES)}); the rest read 'not measured'")
    args = parser.parse_args(argv)
    only = FIGURES
    if args.only:
        only = tuple(n.strip() for n in args.only.split(","))
        unknown = [n for n in only if n not in FIGURES]
        if unknown:
            parser.error(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    settings = SETTINGS["tiny" if args.tiny else "quick" if args.quick else "full"]
    from rich.console import Console

    result = run(settings, only)
    print_report(result, Console(width=None if sys.stdout.isatty() else 140))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    from tuner.bench import main as _main  # trainables pickled by reference to tuner.bench, not __main__

    sys.exit(_main())
