"""What a named search space is: plain data, with Ray Tune's sampling vocabulary for distributions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Asha:
    """ASHA settings; max_t comes from the sweep's max epochs."""

    grace_period: int = 1
    reduction_factor: int = 3


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str  # one line
    reproduces: str  # the seed experiment and its reported figures
    dataset: str  # default data set
    fixed: dict[str, Any]  # trial-config keys held constant
    params: dict[str, Any]  # trial-config keys searched: ray.tune domains (tune.loguniform, tune.choice, ...)
    search: Literal["optuna", "grid", "random"] = "optuna"
    metric: str = "val_top1"
    mode: Literal["max", "min"] = "max"
    asha: Asha | None = field(default_factory=Asha)  # None: every trial runs its full budget
    num_samples: int = 16
    max_epochs: int = 30
    # Per-dataset adjustments, e.g. a narrower net on the tiny offline `digits` set for quick starts.
    dataset_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Keys the user must give with --set, each with the line that tells them how (e.g. pretrained weights).
    requires: dict[str, str] = field(default_factory=dict)
    # Size an image-folder data set is decoded and stored at (the largest image_size the space uses).
    folder_image_size: int = 64
    # A second stage: after this sweep, one sweep of `then` per model family, starting from that family's best
    # checkpoint (its architecture keys carried over, `pretrained` pointing at the checkpoint).
    then: "SearchSpace | None" = None
    # Accuracy under a deployment budget (tuner.objectives): e.g. ("val_top1", "latency_ms") and ("latency_ms<=5",);
    # --objective / --constraint replace them
    objectives: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
