"""The tier-1 figures of `make gpu-check`, each side by side with its baseline in one run, as ratios:

    trainable_vs_bare  images/s of train_epochs vs a bare loop with the same model (>= 0.95), per model, 32 px
    data_path          train_epochs vs the tutorial way (torchvision transforms on PIL images in a DataLoader with
                       4 workers, each batch copied to the GPU): resnet18 at 32 px (>= 5x)
    packing            aggregate images/s of 1, 2, 4, 8 trials packed on one GPU (benchmarks.gpu.PackedTrials) over
                       one alone, cnn_basic and resnet18 (>= 2.5x at 4 for cnn_basic)
    mfu                achieved FLOP/s of train_epochs (FLOPs from FlopCounterMode) over the device's dense bf16
                       peak: resnet18 at batch 512 (>= 25 %); mfu_compile: the same with torch.compile

Every loop trains on a generated CIFAR-sized set (uint8 32 px); each is timed after a warm-up epoch, and stops
early when its section's budget is spent. In the CPU form the same code runs at tiny sizes and each row says
"not measured: no GPU".
"""

from __future__ import annotations

import random
import statistics
import time
import warnings
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Iterator

from benchmarks.common import TARGETS, Target
from gpucheck.report import figure_row, missing_row
from gpucheck.sections import Budget, Sizes, dense_bf16_peak, error_line

if TYPE_CHECKING:
    from trainables.data import ImageSplits

TRAINABLE_VS_BARE = TARGETS["trainable_vs_bare"]  # >= 0.95, as benchmarks' CPU figure
DATA_PATH = Target(5, at_least=True)
MFU = Target(0.25, at_least=True)
PACKING = Target(2.5, at_least=True)  # cnn_basic, 4 trials per GPU
PACKING_TARGETED = ("cnn_basic", 4)
MANY_EPOCHS = 10_000  # loops are stopped by the caller: no validation, no end of schedule inside a measurement
# dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, matched as whole words of the device name, first match wins
def cuda_sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_device_memory(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def generated_data(sizes: Sizes) -> ImageSplits:
    from benchmarks.gpu import random_splits

    return random_splits(sizes.images, sizes.val_images)


def epoch_rates(cfg, data, device, epochs: int, budget: Budget | None = None) -> list[float]:
    """images/s of `epochs` epochs of train_epochs after one warm-up epoch (fewer once the budget is spent)."""
    from trainables.classify import train_epochs

    loop = train_epochs(cfg, data, device=device)
    rates = []
    try:
        next(loop)
        for metrics, _ in loop:
            rates.append(metrics["images_per_s"])
            if len(rates) >= epochs or (budget is not None and budget.spent()):
                break
    finally:
        loop.close()
    return rates


class BareLoop:
    """The same model trained the plain way: data resident on the device, a batch by fancy indexing, one random
    crop offset per batch and a per-image flip, torch.optim.AdamW, cross-entropy; bf16 autocast and channels_last
    on CUDA like a trial. No schedule, no loss accumulation, no per-step bookkeeping."""

    def __init__(self, cfg, data, device) -> None:
        import torch

        from trainables.models import create_model

        self.cuda = device.type == "cuda"
        self.device, self.batch, self.cfg = device, cfg.batch_size, cfg
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, data.num_classes, image_size=data.image_size, width=cfg.width,
                             vit_patch=cfg.vit_patch, vit_depth=cfg.vit_depth, vit_dim=cfg.vit_dim,
                             vit_heads=cfg.vit_heads, vit_mlp_dim=cfg.vit_mlp_dim).to(device)
        self.channels_last = self.cuda and cfg.channels_last
        self.model = model.to(memory_format=torch.channels_last) if self.channels_last else model
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.x = torch.from_numpy(data.train_x.copy()).to(device)
        self.y = torch.from_numpy(data.train_y.copy()).to(device)
        self.mean = torch.tensor(data.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, 3, 1, 1)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda and cfg.amp else nullcontext()

    def step(self, x, y) -> None:
        import torch
        import torch.nn.functional as F

        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast:
            loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def epoch(self) -> float:
        """One epoch; its images/s (CUDA events around it on a GPU)."""
        import torch
        import torch.nn.functional as F

        self.model.train()
        n, size = len(self.y) // self.batch * self.batch, self.x.shape[-1]
        perm = torch.randperm(len(self.y), device=self.device)
        with Timer(self.device) as timer:
            for start in range(0, n, self.batch):
                idx = perm[start:start + self.batch]
                dy, dx = random.randint(0, 8), random.randint(0, 8)
                x = F.pad(self.x[idx], (4, 4, 4, 4))[:, :, dy:dy + size, dx:dx + size]
                flip = torch.rand(len(idx), device=self.device) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
                self.step((x.float() / 255.0 - self.mean) / self.std, self.y[idx])
        return n / timer.seconds


class Timer:
    """Wall seconds of a block of device work: CUDA events (synchronized) on a GPU, perf_counter on the CPU."""

    def __init__(self, device) -> None:
        self.device, self.seconds = device, 0.0

    def __enter__(self) -> "Timer":
        import torch

        cuda_sync(self.device)
        if self.device.type == "cuda":
            self.events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.events[0].record()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.events[1].record()
            self.events[1].synchronize()
            self.seconds = self.events[0].elapsed_time(self.events[1]) / 1000.0
        else:
            self.seconds = time.perf_counter() - self.t0


def compare_with_bare(model: str, data, sizes: Sizes, budget: Budget, device) -> dict[str, Any]:
    """train_epochs and the bare loop an epoch each in turn, after a warm-up epoch of each; medians and ratio."""
    from trainables.classify import train_epochs
    from trainables.config import TrialConfig

    cfg = TrialConfig.from_dict(sizes.config(model, max_epochs=MANY_EPOCHS))
    bare = BareLoop(cfg, data, device)
    loop = train_epochs(cfg, data, device=device)
    ours, bares = [], []
    try:
        for r in range(sizes.timed_epochs + 1):
            o, b = next(loop)[0]["images_per_s"], bare.epoch()
            if r > 0:
                ours.append(o)
                bares.append(b)
                if budget.spent():
                    break
    finally:
        loop.close()
    ratios = [o / b for o, b in zip(ours, bares)]
    return {"ours_images_per_s": statistics.median(ours), "bare_images_per_s": statistics.median(bares),
            "ratio": statistics.median(ratios), "ratios": ratios, "timed_epochs": len(ours),
            "batch_size": cfg.batch_size, "images": len(data.train_y), "config": sizes.overrides.get(model, {})}


def trainable_vs_bare(sizes: Sizes, budget: Budget, out) -> dict[str, Any]:
    """Figure rows `trainable_vs_bare: MODEL` for each model; a model the budget has no room for is cut."""
    import torch

    device, data = torch.device(sizes.device), generated_data(sizes)
    rows, details = [], {}
    for model in sizes.models:
        name = f"trainable_vs_bare: {model} 32 px"
        if budget.spent(need=3.0):
            rows.append(missing_row(name, "cut by the time guard"))
            continue
        try:
            d = details[model] = compare_with_bare(model, data, sizes, budget, device)
            rows.append(figure_row(name, d["ours_images_per_s"], d["bare_images_per_s"], ratio=d["ratio"],
                                   target=TRAINABLE_VS_BARE, unit="images/s", baseline_is="bare loop",
                                   measured=sizes.measured))
        except Exception as exc:  # noqa: BLE001 - one model's failure is its row; the others still run
            rows.append(missing_row(name, f"error: {error_line(exc)}"))
        free_device_memory(device)
    return {"figures": rows, "details": details}


def forever(loader) -> Iterator:
    while True:
        yield from loader


def tutorial_rate(cfg, data, sizes: Sizes, device) -> dict[str, Any]:
    """images/s of the tutorial way: a Dataset of PIL images with RandomCrop(32, padding=4), RandomHorizontalFlip,
    ToTensor, Normalize, through DataLoader(shuffle, `tutorial_workers` workers), each batch copied to the device
    in the step; the same model and step as the bare loop. Timed over `tutorial_steps` after a warm-up."""
    import numpy as np
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from benchmarks.augment_vs_torchvision import PilDataset

    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(data.mean, data.std)])
    dataset = PilDataset(np.ascontiguousarray(data.train_x.transpose(0, 2, 3, 1)), data.train_y, transform)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=sizes.tutorial_workers,
                        drop_last=True, persistent_workers=True)
    trainer = BareLoop(cfg, data, device)
    del trainer.x, trainer.y  # the tutorial's images live in the Dataset, not on the device
    with warnings.catch_warnings():  # 4 workers on fewer cores (the CPU form): as the tutorial asks, knowingly
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        batches = forever(loader)
        for _ in range(sizes.tutorial_warmup):  # workers started, kernels loaded
            x, y = next(batches)
            trainer.step(x.to(device), y.to(device))
        with Timer(device) as timer:
            for _ in range(sizes.tutorial_steps):
                x, y = next(batches)
                trainer.step(x.to(device), y.to(device))
    del batches, loader
    return {"images_per_s": sizes.tutorial_steps * cfg.batch_size / timer.seconds, "workers": sizes.tutorial_workers,
            "timed_steps": sizes.tutorial_steps}


def data_path(sizes: Sizes, budget: Budget, out) -> dict[str, Any]:
    """Figure row `data_path_vs_tutorial`: our data path (train_epochs) vs the tutorial way, resnet18 at 32 px."""
    import torch

    from trainables.config import TrialConfig

    device, data = torch.device(sizes.device), generated_data(sizes)
    cfg = TrialConfig.from_dict(sizes.config("resnet18", max_epochs=MANY_EPOCHS))
    ours = statistics.median(epoch_rates(cfg, data, device, sizes.timed_epochs, budget))
    free_device_memory(device)
    tutorial = tutorial_rate(cfg, data, sizes, device)
    row = figure_row("data_path_vs_tutorial: resnet18 32 px", ours, tutorial["images_per_s"], target=DATA_PATH,
                     unit="images/s", baseline_is=f"PIL + DataLoader({sizes.tutorial_workers} workers)",
                     measured=sizes.measured)
    return {"figures": [row], "details": {"ours_images_per_s": ours, "tutorial": tutorial,
                                          "batch_size": cfg.batch_size}}


def flops_per_image(cfg, num_classes: int, image_size: int, device, batch: int) -> float:
    """FLOPs of one training step (forward and backward) per image, counted by FlopCounterMode on a batch of
    `batch` (the count is linear in the batch), with the trial's model, autocast and memory format."""
    import dataclasses

    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from trainables.classify import build_model

    model = build_model(dataclasses.replace(cfg, compile=False), num_classes, device, image_size)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    if device.type == "cuda" and cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.amp else nullcontext()
    with FlopCounterMode(display=False) as counter:
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
    return counter.get_total_flops() / batch


def mfu_name(sizes: Sizes, compiled: bool) -> str:
    return f"mfu: resnet18 32 px batch {sizes.mfu_batch}{', torch.compile' if compiled else ''}"


def mfu_row(compiled: bool, sizes: Sizes, budget: Budget, data, device, peak: float | None) -> tuple[dict, dict]:
    """One MFU figure row and its details: train_epochs' images/s x FLOPs per image over the dense bf16 peak."""
    from trainables.config import TrialConfig

    cfg = TrialConfig.from_dict(sizes.config("resnet18", batch_size=sizes.mfu_batch, max_epochs=MANY_EPOCHS,
                                             compile=compiled))
    per_image = flops_per_image(cfg, data.num_classes, data.image_size, device, sizes.flop_count_batch)
    rate = statistics.median(epoch_rates(cfg, data, device, sizes.timed_epochs, budget))
    achieved = per_image * rate / 1e12
    name = mfu_name(sizes, compiled)
    row = figure_row(name, achieved, peak if peak else "peak unknown", ratio=achieved / peak if peak else None,
                     target=MFU, unit="TFLOP/s", baseline_is="dense bf16 peak", measured=sizes.measured)
    return row, {"flops_per_image": per_image, "images_per_s": rate, "achieved_tflops": achieved,
                 "peak_tflops": peak}


def mfu(sizes: Sizes, budget: Budget, out) -> dict[str, Any]:
    """Figure row `mfu`, eager (the trial default)."""
    import torch

    device, data = torch.device(sizes.device), generated_data(sizes)
    peak = dense_bf16_peak(torch.cuda.get_device_name(0)) if device.type == "cuda" else None
    row, details = mfu_row(False, sizes, budget, data, device, peak)
    return {"figures": [row], "details": details}


def mfu_compiled(sizes: Sizes, budget: Budget, out) -> dict[str, Any]:
    """Figure row `mfu` with --set compile=true: its own section, so a slow compile is cut alone (GPU only)."""
    import torch

    if sizes.device != "cuda":
        why = "no GPU (torch.compile on a CPU takes minutes; compiled on CUDA only)"
        return {"status": "skipped", "figures": [missing_row(mfu_name(sizes, True), why)]}
    device, data = torch.device(sizes.device), generated_data(sizes)
    row, details = mfu_row(True, sizes, budget, data, device, dense_bf16_peak(torch.cuda.get_device_name(0)))
    return {"figures": [row], "details": details}


def packing_rows(model: str, result: dict[str, Any], ks: tuple[int, ...], sizes: Sizes) -> list[dict[str, Any]]:
    rows = []
    for k in ks:
        name = f"packing_speedup: {model}, {k} trial(s) per GPU"
        aggregate = result.get("aggregate_images_per_s", {}).get(str(k))
        if aggregate is None:
            rows.append(missing_row(name, result.get("why", "cut by the time guard")))
            continue
        target = PACKING if (model, k) == PACKING_TARGETED else None
        rows.append(figure_row(name, aggregate, result["aggregate_images_per_s"][str(ks[0])],
                               ratio=result["speedup"][str(k)], target=target, unit="images/s",
                               baseline_is=f"{ks[0]} alone", measured=sizes.measured))
    return rows


def packing(sizes: Sizes, budget: Budget, out) -> dict[str, Any]:
    """Figure rows `packing_speedup`: k = 1, 2, 4, 8 spawned trials at once (each with 1/k of the GPU's memory, as
    Ray's fractional GPUs), one pool of processes for every round; a round the budget has no room for is cut."""
    from benchmarks.gpu import PackedTrials, packing_speedup
    from trainables.config import TrialConfig

    ks, rows, details = sizes.packing_ks, [], {}
    round_s = 2 * sizes.packing_window_s + 3  # a window, the warm-up epoch and the stragglers' last epoch
    pool = PackedTrials(max(ks), sizes.device)
    try:
        for model in sizes.packing_models:
            config = TrialConfig.from_dict(sizes.config(model, max_epochs=MANY_EPOCHS)).to_dict()
            try:
                result = packing_speedup(config, ks, sizes.packing_images[model], sizes.device,
                                         sizes.packing_window_s, pool, should_stop=lambda: budget.spent(round_s))
            except Exception as exc:  # noqa: BLE001 - this model's rows say so; a fresh pool for the next
                result = {"why": f"error: {error_line(exc)}"}
                pool.close()
                pool = PackedTrials(max(ks), sizes.device)
            details[model] = result
            rows += packing_rows(model, result, ks, sizes)
    finally:
        pool.close()
    return {"figures": rows, "details": details}
