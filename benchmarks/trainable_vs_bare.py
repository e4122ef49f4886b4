"""Figure 1, `trainable_vs_bare`: images/s of the trials' own training loop vs a bare PyTorch loop."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np

from benchmarks.common import TARGETS, Settings, fit, history, subset, sweep_spec, torch_threads

TARGET = TARGETS["trainable_vs_bare"]


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

    images = subset(data, s.train_images)
    cfg = config(s.train_width, s.train_batch, s.train_rounds)
    with torch_threads(s.threads):
        bare_epoch = bare_loop(images, cfg)
        ours, bare = interleave(cfg, images, bare_epoch, s.train_rounds)
    ratios = [o / b for o, b in zip(ours, bare)]
    out: dict[str, Any] = {
        "model": f"{s.train_model} width {s.train_width:g} at 32 px", "images": whole_batches(images, cfg),
        "batch_size": s.train_batch, "torch_threads": s.threads, "timed_epochs": s.train_rounds,
        "ours_images_per_s": statistics.median(ours), "bare_images_per_s": statistics.median(bare),
        # the median of the per-epoch ratios: each pairs epochs run back to back, so slow drifts of other load
        # on the machine cancel out
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios), "ratio_max": max(ratios), "target_ratio": float(TARGET.value),
    }
    if storage is not None:
        with torch_threads(s.threads):
            out.update(ray_trial_throughput(images, cfg, s, storage, bare_epoch))
    out["met"] = TARGET.met(out["ratio"]) and ("ray_trial_ratio" not in out or TARGET.met(out["ray_trial_ratio"]))
    if s.small_rounds:
        small_cfg = config(s.small_width, s.small_batch, s.small_rounds)
        small = subset(data, s.small_images)
        with torch_threads(s.threads):
            small_ours, small_bare = interleave(small_cfg, small, bare_loop(small, small_cfg), s.small_rounds)
        out["small_model"] = {
            "model": f"{s.train_model} width {s.small_width:g} at 32 px", "images": whole_batches(small, small_cfg),
            "batch_size": s.small_batch, "timed_epochs": s.small_rounds,
            "ours_images_per_s": statistics.median(small_ours), "bare_images_per_s": statistics.median(small_bare),
            "ratio": statistics.median([o / b for o, b in zip(small_ours, small_bare)]),
        }
    return out


def whole_batches(images, cfg) -> int:
    """The training images an epoch sees: whole batches only."""
    return len(images.train_y) // cfg.batch_size * cfg.batch_size


def bare_loop(images, cfg) -> Callable[[], float]:
    """One epoch of the bare loop per call (returns its images/s); model and batches made once, here."""
    import torch
    import torch.nn.functional as F

    from trainables.models import create_model

    batch = cfg.batch_size
    n_batches = len(images.train_y) // batch
    n_images = n_batches * batch
    mean = torch.tensor(images.mean).view(1, 3, 1, 1)
    std = torch.tensor(images.std).view(1, 3, 1, 1)
    x_all, y_all = torch.from_numpy(images.train_x.copy()), torch.from_numpy(images.train_y.copy())
    perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(0))
    batches = [(x_all[perm[i * batch:(i + 1) * batch]], y_all[perm[i * batch:(i + 1) * batch]])
               for i in range(n_batches)]
    torch.manual_seed(cfg.seed)  # the same initial weights as train_epochs builds
    model = create_model(cfg.model, images.num_classes, image_size=32, width=cfg.width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(0)
    size = images.image_size

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
        return n_images / (time.perf_counter() - t0)

    return bare_epoch


def interleave(cfg, images, bare_epoch: Callable[[], float], rounds: int) -> tuple[list[float], list[float]]:
    """train_epochs and the bare loop, an epoch of each in turn; the images/s of each after one warm-up epoch."""
    import torch

    from trainables.classify import train_epochs

    ours_loop = train_epochs(cfg, images, device=torch.device("cpu"))
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


def ray_trial_throughput(images, cfg, s: Settings, storage: str, bare_epoch: Callable[[], float]) -> dict[str, Any]:
    """A real 1-trial Ray Tune run of train_classifier with the sweep's run_config (checkpoint every epoch),
    in lockstep with the bare loop: a bare epoch runs in the driver after each epoch the trial reports, while
    the trial waits in tune.report (Tune only lets it go on once the driver has processed the result)."""
    from ray import tune

    from trainables.classify import train_classifier
    from tuner.experiment import run_config

    spec = sweep_spec(storage, "trainable_vs_bare", num_samples=1, max_epochs=s.ray_epochs, sets=[], concurrency=1)
    config = {**cfg.to_dict(), "max_epochs": s.ray_epochs, "val_every": 1}
    trainable = tune.with_resources(tune.with_parameters(train_classifier, data=images), {"cpu": 1})
    lockstep = bare_epoch_after_each_result(bare_epoch)
    cpu0 = time.process_time()
    grid, wall = fit(trainable, param_space=config,
                     tune_config=tune.TuneConfig(num_samples=1, metric="val_top1", mode="max", reuse_actors=True),
                     run_config=run_config(spec, [lockstep], spec.sweep_dir))
    per_epoch = whole_batches(images, cfg)
    bare_cpu = sum(lockstep.seconds)  # the bare epochs ran in this process too
    bare_wall = sum(per_epoch / rate for rate in lockstep.rates)
    driver_cpu = (time.process_time() - cpu0 - bare_cpu) / max(wall - bare_wall, 1e-9)
    rows = history(grid[0])
    # the first epoch is warm-up; the bare epoch after trial epoch k is rates[k - 1]
    trial_rates = [r["images_per_s"] for r in rows[1:]]
    bare_rates = lockstep.rates[1:len(rows)]
    ratios = [t / b for t, b in zip(trial_rates, bare_rates)]
    return {
        "ray_trial_images_per_s": statistics.median(trial_rates),
        "ray_trial_bare_images_per_s": statistics.median(bare_rates),
        "ray_trial_ratio": statistics.median(ratios), "ray_trial_ratio_min": min(ratios),
        "ray_trial_ratio_max": max(ratios),
        # the same epochs counted whole: training + validation + checkpoint save + report, as Tune times them
        # (time_this_iter_s runs from the driver's go-ahead to the next result, so not the bare epochs' wait)
        "ray_trial_end_to_end_images_per_s": per_epoch * len(rows[1:]) / sum(r["time_this_iter_s"] for r in rows[1:]),
        # where the rest of an epoch goes: validation (epoch_s less the training time), then the checkpoint save
        # and tune.report inside the trial (time_this_iter_s less epoch_s)
        "ray_trial_validation_s": statistics.median([r["epoch_s"] - per_epoch / r["images_per_s"] for r in rows[1:]]),
        "ray_trial_checkpoint_and_report_s": statistics.median([r["time_this_iter_s"] - r["epoch_s"]
                                                                for r in rows[1:]]),
        "ray_trial_epochs": s.ray_epochs, "ray_trial_wall_s": wall,
        "ray_driver_cpu_share": driver_cpu,  # cores the Tune driver process kept busy, bare epochs left out
    }


def bare_epoch_after_each_result(bare_epoch: Callable[[], float]):
    """A Tune callback running one bare epoch per trial result, while the trial waits for the driver; its
    `rates` (images/s) and `seconds` (CPU seconds of this process) per bare epoch. Built here so that importing
    this module does not import Ray Tune (spawned processes of the GPU measurement import the benchmarks)."""
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
