"""One Ray Tune trial: build data, model and recipe from a flat config, train epoch by epoch, report.

    for epoch: train on augmented batches -> evaluate on validation (every val_every epochs)
               -> tune.report(metrics, checkpoint) -> stop early after `patience` validations without a new best

The loop reads top to bottom on purpose (nanoGPT style); the data stays on the trial's device
as uint8 for the whole trial and is augmented there in batches (airbench style).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import warnings
from contextlib import nullcontext
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from trainables.augment import BatchAugment
from trainables.config import HUB, TrialConfig
from trainables.data import ImageSplits
from trainables.errors import UserError
from trainables.models import (create_model, freeze_backbone, freeze_backbone_batchnorm, load_hub_weights,
                               load_pretrained, weights_file)
from trainables.placement import DeviceImages, host_tensor
from trainables.recipe import create_recipe

CHECKPOINT_FILE = "checkpoint.pt"
EVAL_BATCH = 512
# What every epoch of train_epochs reports (besides "epoch" and the flags validated / diverged / early_stopped):
# the names of epochs.parquet's columns and of each trial's MLflow metrics, stepped by epoch.
EPOCH_METRICS = ("train_loss", "val_loss", "val_top1", "val_top5", "best_val_top1", "lr", "images_per_s", "epoch_s")


def train_classifier(config: dict[str, Any], data: ImageSplits, constant: dict[str, float] | None = None) -> None:
    """Ray Tune function trainable. `data` arrives through the object store (see tuner.sweep); `constant` metrics
    (a footprint's deployment costs) go with every result."""
    from ray import tune

    cfg = TrialConfig.from_dict(config)
    _set_threads()
    checkpoint = tune.get_checkpoint()  # a retried failure, a lost node, or `--resume`
    resume_from = resume_state(checkpoint) if checkpoint is not None else None
    # which epoch this run of the trial started from (0: scratch): shows in Ray's results whether a restarted
    # trial continued from its checkpoint
    extra = {"node_id": _node_id(), "restored_epoch": int(resume_from["epoch"]) if resume_from else 0,
             **(constant or {})}
    for metrics, trial_state in train_epochs(cfg, data, resume_from=resume_from):
        if not metrics["validated"]:  # checkpoints are scored by val_top1, so only weights it was measured on
            tune.report({**metrics, **extra})
            continue
        with tempfile.TemporaryDirectory() as ckpt_dir:
            save_atomic(trial_state(), os.path.join(ckpt_dir, CHECKPOINT_FILE))
            tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(ckpt_dir))


def resume_state(checkpoint) -> dict | None:
    """The state to continue a trial from: its latest checkpoint, else (torn or truncated file: a disk that
    filled up, a copy cut short) the newest of its older checkpoints that still loads, else None (the trial
    starts again from scratch). Each fallback is a warning in the trial's log, never a failed trial."""
    import io

    from pyarrow import fs as pafs

    def load(path: str) -> dict:
        with checkpoint.filesystem.open_input_file(f"{path}/{CHECKPOINT_FILE}") as f:
            state = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"model", "recipe", "epoch"} <= state.keys():
            raise KeyError("model/recipe/epoch")
        return state

    path = checkpoint.path.rstrip("/")
    try:
        return load(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: EOFError, RuntimeError (zip), pickle, OSError
        warnings.warn(f"checkpoint {path}/{CHECKPOINT_FILE} is unreadable ({type(exc).__name__}: {exc}); "
                      f"trying this trial's older checkpoints")
    parent = path.rsplit("/", 1)[0]
    try:
        infos = checkpoint.filesystem.get_file_info(pafs.FileSelector(parent))
    except OSError:
        infos = []
    older = sorted((i.path for i in infos if i.type == pafs.FileType.Directory
                    and i.base_name.startswith("checkpoint_") and i.path.rstrip("/") < path), reverse=True)
    for candidate in older:
        try:
            state = load(candidate)
        except Exception:  # noqa: BLE001
            continue
        warnings.warn(f"trial continues from {candidate} (epoch {state['epoch']}) instead")
        return state
    warnings.warn("no readable checkpoint of this trial is left: it starts again from epoch 1")
    return None


def train_epochs(cfg: TrialConfig, data: ImageSplits, *, device: torch.device | None = None,
                 resume_from: dict | None = None) -> Iterator[tuple[dict[str, Any], Callable[[], dict]]]:
    """Train epoch by epoch; yield each epoch's metrics and a function returning the checkpoint state.

    Free of Ray, so tests and benchmarks drive the very loop that trials run.
    """
    device = device or trial_device()
    torch.manual_seed(cfg.seed)
    train_x = DeviceImages(data.train_x, device)  # on the GPU when it fits, else pinned host memory
    train_y = _to_device(data.train_y, device)
    val_x = DeviceImages(data.val_x, device).images  # evaluate() moves host-held batches itself
    val_y = _to_device(data.val_y, device)

    image_size = cfg.image_size or data.image_size  # what the model sees
    model = build_model(cfg, data.num_classes, device, image_size, load_weights=resume_from is None)
    updates_per_epoch = len(train_y) // cfg.batch_size
    if updates_per_epoch == 0:
        raise UserError(f"batch_size {cfg.batch_size} exceeds the {len(train_y)} training images; lower it")
    recipe = create_recipe(model, cfg, data.num_classes, updates_per_epoch)
    on = cfg.augment  # the master switch of augmentation ablations
    augment = BatchAugment(data.mean, data.std, crop_padding=cfg.crop_padding if on else 0, hflip=cfg.hflip and on,
                           image_size=cfg.image_size, rotation=cfg.rotation if on else 0.0,
                           randaugment_magnitude=cfg.randaugment_magnitude if on else 0.0,
                           randaugment_ops=cfg.randaugment_ops, randaugment_mstd=cfg.randaugment_mstd,
                           random_erasing=cfg.random_erasing if on else 0.0,
                           device=device)
    step_model = torch.compile(model) if cfg.compile else model
    autocast = _autocast(cfg, device)
    generator = torch.Generator(device=device)

    start_epoch, best_val_top1 = 0, 0.0
    stale = 0  # validations since the last new best val_top1
    val = {"loss": math.nan, "top1": math.nan, "top5": math.nan}  # the last measured; NaN before the first
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        recipe.load_state_dict(resume_from["recipe"])
        start_epoch, best_val_top1 = resume_from["epoch"], resume_from["best_val_top1"]
        stale, val = resume_from.get("stale", 0), resume_from.get("val", val)

    for epoch in range(start_epoch + 1, cfg.max_epochs + 1):
        t0 = time.perf_counter()
        generator.manual_seed(cfg.seed * 100_003 + epoch)  # the same batches after a resume
        if recipe.mixup is not None:
            np.random.seed(cfg.seed * 100_003 + epoch)  # timm's Mixup draws from numpy's global RNG
        model.train()
        if cfg.freeze_backbone:
            freeze_backbone_batchnorm(model)
        order = epoch_order(len(train_y), cfg.repeat_aug, generator, device)
        if not train_x.resident:
            order = order.cpu()  # batches are gathered on the host: one sync per epoch, not per step
        loss_sum = torch.zeros((), device=device)
        for step in range(updates_per_epoch):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            images, targets = augment(train_x.batch(idx), generator), train_y[idx.to(device)]
            if recipe.mixup is not None:
                images, targets = recipe.mixup(images, targets)
            if cfg.channels_last and device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = recipe.train_loss(step_model(images), targets)
            recipe.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            recipe.optimizer.step()
            recipe.scheduler.step_update((epoch - 1) * updates_per_epoch + step + 1)
            loss_sum += loss.detach()
        train_loss = (loss_sum / updates_per_epoch).item()  # one device sync per epoch, not per step
        train_s = time.perf_counter() - t0

        validated = epoch % cfg.val_every == 0 or epoch == cfg.max_epochs
        if validated:
            val = evaluate(step_model, val_x, val_y, augment, autocast)
            stale = 0 if val["top1"] > best_val_top1 else stale + 1
            best_val_top1 = max(best_val_top1, val["top1"])
        metrics = {
            "epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"], "val_top1": val["top1"],
            "val_top5": val["top5"], "best_val_top1": best_val_top1, "validated": validated,
            "lr": max(group["lr"] for group in recipe.optimizer.param_groups),  # layer_decay scales the others
            "images_per_s": updates_per_epoch * cfg.batch_size / train_s, "epoch_s": time.perf_counter() - t0,
            "diverged": not math.isfinite(train_loss),
            "early_stopped": cfg.patience > 0 and stale >= cfg.patience and epoch < cfg.max_epochs,
        }
        yield metrics, lambda epoch=epoch, best=best_val_top1, stale=stale, val=dict(val): {
            "model": model.state_dict(), "recipe": recipe.state_dict(), "epoch": epoch, "best_val_top1": best,
            "stale": stale, "val": val, "image_size": image_size,
            "config": cfg.to_dict(), "num_classes": data.num_classes, "classes": list(data.classes),
            "mean": list(data.mean), "std": list(data.std)}
        if metrics["diverged"] or metrics["early_stopped"]:
            return  # a non-finite loss never recovers; a stalled one stops to free its slot for other trials


def epoch_order(n: int, repeats: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """The epoch's sample order: a permutation, or with repeats > 1 repeated augmentation (Hoffer et al. 2020).

    ceil(n / repeats) images, each `repeats` times in a row (so in one batch, where its copies are augmented
    differently), n samples in all. timm's RepeatAugSampler has this rule but seeds its order by the epoch alone,
    the same for every trial, and yields a Python list; this draws it from the trial's generator on its device.
    """
    order = torch.randperm(n, device=device, generator=generator)
    if repeats == 1:
        return order
    return order[:-(-n // repeats)].repeat_interleave(repeats)[:n]


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, augment: BatchAugment,
             autocast=nullcontext(), batch_size: int = EVAL_BATCH) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy (in %) on un-augmented images, in one pass."""
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    hits = torch.zeros(2, device=images.device)
    k = 5
    for start in range(0, len(labels), batch_size):
        x = augment.normalize(images[start:start + batch_size].to(labels.device, non_blocking=True))
        y = labels[start:start + batch_size]
        with autocast:
            logits = model(x).float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
        topk = logits.topk(min(k, logits.shape[1]), dim=1).indices
        correct = topk == y[:, None]
        hits += torch.stack([correct[:, 0].sum(), correct.any(dim=1).sum()])
    n = len(labels)
    top1, top5 = (100.0 * int(h) / n for h in hits.tolist())  # exact counts, in float64: no float32 noise
    return {"loss": loss_sum.item() / n, "top1": top1, "top5": top5}


def build_model(cfg: TrialConfig, num_classes: int, device: torch.device, image_size: int | None = None, *,
                load_weights: bool = True) -> nn.Module:
    """The trial's model for `image_size` inputs, from its pretrained weights when set, backbone frozen when asked.

    `image_size` is the size the model sees (cfg.image_size, else the data set's; None: cfg.image_size or 32).
    `load_weights=False` skips the pretrained file (a resumed trial restores its own weights).
    """
    model = _create_net(cfg, num_classes, image_size or cfg.image_size or 32)
    if cfg.pretrained == HUB and load_weights:
        load_hub_weights(model, cfg.model)
    elif cfg.pretrained and load_weights:
        load_pretrained(model, weights_file(cfg.pretrained, cfg.model))
    if cfg.freeze_backbone:
        freeze_backbone(model)
    model = model.to(device)
    if cfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


class ImageClassifier(nn.Module):
    """A trained net with its preprocessing: float images in [0, 1] (B, 3, H, W) -> logits (or probabilities).

    What gets exported and registered, so a user feeds plain images and gets the trial's behaviour.
    `input_size`: the side in pixels of the images the net was trained on (after the trial's resize); feeding
    images of that size skips the resize (tuner.predict resizes to it). None on models pickled before it existed.
    """

    def __init__(self, net: nn.Module, mean: list[float], std: list[float], image_size: int,
                 classes: list[str], input_size: int | None = None) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.image_size = image_size
        self.classes = list(classes)
        self.input_size = input_size or image_size or None
        self.probabilities = False  # True: softmax over the classes (the registered model); else logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        if self.image_size and self.image_size != x.shape[-1]:
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                          antialias=self.image_size < x.shape[-1], align_corners=False)
        logits = self.net(x)
        return logits.softmax(dim=1) if getattr(self, "probabilities", False) else logits


def load_checkpoint_model(path: str, device: torch.device | str = "cpu") -> tuple[ImageClassifier, TrialConfig]:
    """Rebuild a trained model from a trial checkpoint directory (weights only, no unpickling of code)."""
    file = os.path.join(path, CHECKPOINT_FILE)
    try:
        state = torch.load(file, map_location=device, weights_only=True)
        cfg = TrialConfig.from_dict(state["config"])
        net = _create_net(cfg, state["num_classes"], state["image_size"])
        net.load_state_dict(state["model"])
    except (OSError, RuntimeError, KeyError, EOFError) as exc:
        raise UserError(f"checkpoint {file} is unreadable ({type(exc).__name__}); it may be truncated") from None
    model = ImageClassifier(net, state["mean"], state["std"], cfg.image_size, state["classes"],
                            input_size=state.get("image_size"))
    return model.to(device).eval(), cfg


def _create_net(cfg: TrialConfig, num_classes: int, image_size: int) -> nn.Module:
    return create_model(cfg.model, num_classes, image_size=image_size, width=cfg.width, drop_rate=cfg.drop_rate,
                        drop_path=cfg.drop_path, vit_patch=cfg.vit_patch, vit_depth=cfg.vit_depth,
                        vit_dim=cfg.vit_dim, vit_heads=cfg.vit_heads, vit_mlp_dim=cfg.vit_mlp_dim)


def save_atomic(obj: Any, path: str) -> None:
    """Write then rename, so a kill mid-write never leaves a torn checkpoint."""
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def trial_device() -> torch.device:
    # Ray hides GPUs a trial did not ask for (CUDA_VISIBLE_DEVICES), so availability means ownership.
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = host_tensor(array)
    return tensor.to(device, non_blocking=True) if device.type == "cuda" else tensor


def _autocast(cfg: TrialConfig, device: torch.device):
    if cfg.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _set_threads() -> None:
    """Use exactly the CPUs Ray gave this trial, so packed trials do not fight over cores."""
    try:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
    except Exception:  # outside Ray (benchmarks, tests)
        cpus = 0
    if cpus >= 1:
        torch.set_num_threads(int(cpus))


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:
        return ""
