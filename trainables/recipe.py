"""Training recipe from timm's factories: optimizer, per-update LR schedule, loss, Mixup/CutMix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from trainables.config import TrialConfig

# Our schedule names -> timm's. "exponential" is timm's step schedule decaying by gamma every epoch.
_TIMM_SCHED = {"cosine": "cosine", "step": "step", "exponential": "step", "constant": "step"}


@dataclass
class Recipe:
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm.scheduler.Scheduler, stepped with step_update(num_updates)
    train_loss: nn.Module  # takes (logits, hard or soft targets)
    mixup: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def create_recipe(model: nn.Module, cfg: TrialConfig, num_classes: int, updates_per_epoch: int) -> Recipe:
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    extra = {"nesterov": cfg.nesterov} if cfg.opt == "sgd" else {}
    # layer_decay: timm scales each layer group's LR (the group's lr_scale, which its schedulers honour);
    # parameters with requires_grad False (a frozen backbone) are left out of the optimizer
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum, layer_decay=cfg.layer_decay or None, **extra)
    decay_epochs = {"step": cfg.step_epochs, "exponential": 1, "constant": 10 ** 9}.get(cfg.sched, 1)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=_TIMM_SCHED[cfg.sched], num_epochs=cfg.max_epochs, decay_epochs=decay_epochs,
        decay_rate=1.0 if cfg.sched == "constant" else cfg.gamma, min_lr=cfg.min_lr,
        warmup_epochs=int(round(cfg.warmup_epochs)), warmup_lr=cfg.lr * 1e-3, warmup_prefix=True,
        step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    mixup = _create_mixup(cfg, num_classes)
    return Recipe(optimizer, scheduler, create_train_loss(cfg, mixup is not None), mixup)


def _create_mixup(cfg: TrialConfig, num_classes: int):
    if cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0 or cfg.mix_prob <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mix_prob,
                 switch_prob=cfg.mix_switch_prob, label_smoothing=cfg.label_smoothing, num_classes=num_classes)


def create_train_loss(cfg: TrialConfig, soft_targets: bool) -> nn.Module:
    """timm train.py's choice: with Mixup the targets are already soft (and smoothed)."""
    from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    thresh = cfg.bce_target_thresh or None
    if cfg.loss == "bce":
        return BinaryCrossEntropy(smoothing=0.0 if soft_targets else cfg.label_smoothing, target_threshold=thresh)
    if soft_targets:
        return SoftTargetCrossEntropy()
    if cfg.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.label_smoothing)
    return nn.CrossEntropyLoss()
