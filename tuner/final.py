"""After the search: each model family's best trial (by validation, optionally re-trained with new seeds), tested once.

The test split reaches nothing else: one forward pass per tested model, and every test figure (top-1, top-5,
loss, per-class accuracy, confusion matrix) comes from that pass's logits.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuner.folder import SweepFolder, confusion_file
from tuner.results import COMPLETED

log = logging.getLogger(__name__)


@dataclass
class TestResult:
    """One model's single pass over the test split."""

    top1: float
    top5: float
    loss: float
    images: int
    per_class_top1: list[float] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)  # rows: true class, columns: predicted class

    def metrics(self) -> dict[str, float]:
        return {"test_top1": self.top1, "test_top5": self.top5, "test_loss": self.loss}


def best_per_family(rows: list[dict], top: int = 1) -> dict[str, list[dict]]:
    """The `top` best trials (validation top-1) of each model that left a checkpoint, best first."""
    families: dict[str, list[dict]] = {}
    for row in rows:
        if row["checkpoint"] and row["status"] in COMPLETED and not math.isnan(row["best_val_top1"]):
            families.setdefault(row["model"], []).append(row)
    return {family: sorted(members, key=lambda r: -r["best_val_top1"])[:top]
            for family, members in sorted(families.items())}


def test_once(checkpoint_dir: str, splits, batch_size: int = 512) -> tuple[Any, TestResult]:
    """Load a trial checkpoint and make the one pass over the test split; returns the model (on CPU) and figures."""
    import torch

    from trainables.augment import BatchAugment
    from trainables.classify import load_checkpoint_model, trial_device
    from trainables.placement import host_tensor

    device = trial_device()
    model, cfg = load_checkpoint_model(checkpoint_dir, device)
    # the trial's own evaluation path on the bare net, so test and validation figures are comparable
    preprocess = BatchAugment(splits.mean, splits.std, image_size=cfg.image_size, device=device)
    test_x = host_tensor(splits.test_x)  # memory-mapped: batches are read as they are used
    with torch.no_grad():
        logits = torch.cat([model.net(preprocess.normalize(test_x[i:i + batch_size].to(device))).float().cpu()
                            for i in range(0, len(test_x), batch_size)])
    return model.cpu(), scores_from_logits(logits, torch.from_numpy(splits.test_y).long(), splits.num_classes)


def scores_from_logits(logits, labels, num_classes: int) -> TestResult:
    import torch

    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    predicted = top[:, 0]
    confusion = torch.bincount(labels * num_classes + predicted, minlength=num_classes ** 2)
    confusion = confusion.view(num_classes, num_classes)
    support = confusion.sum(1).clamp(min=1)
    return TestResult(
        top1=100.0 * (predicted == labels).sum().item() / len(labels),  # exact counts, no float32 rounding
        top5=100.0 * (top == labels[:, None]).any(1).sum().item() / len(labels),
        loss=loss, images=len(labels),
        per_class_top1=(100.0 * confusion.diagonal() / support).tolist(),
        confusion=confusion.tolist())


def plot_confusion(test: TestResult, classes: list[str], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix as a PNG; counts written in the cells while they stay legible."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(test.confusion)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n = len(classes)
    size = min(4 + 0.45 * n, 16)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if n <= 20:
        ax.set_xticks(range(n), classes, rotation=45, ha="right")
        ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass
class FamilyResult:
    """A family's pick: its trial (or, with --reseed, the re-trained config) and the test figures."""

    family: str
    trial_id: str  # the tested model's trial (with --reseed: the best-validated of the re-trained ones)
    checkpoint: str
    val_top1: float
    test: TestResult
    confusion_png: str
    seeds: int = 1
    val_top1_mean: float = math.nan
    val_top1_std: float = math.nan
    test_top1_mean: float = math.nan
    test_top1_std: float = math.nan
    searched_trial_id: str = ""  # the sweep trial whose config this is

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "FamilyResult":
        """Back from final.parquet (for tuner.sync); the confusion counts stay in their PNG."""
        test = TestResult(row["test_top1"], row["test_top5"], row["test_loss"], row["test_images"],
                          list(row["per_class_top1"]))
        return cls(row["family"], row["trial_id"], row["checkpoint"], row["val_top1"], test, row["confusion_png"],
                   row["seeds"], row["val_top1_mean"], row["val_top1_std"], row["test_top1_mean"],
                   row["test_top1_std"], row["searched_trial_id"])

    def row(self, classes: list[str]) -> dict[str, Any]:
        return {"family": self.family, "trial_id": self.trial_id, "searched_trial_id": self.searched_trial_id,
                "model": self.family, "checkpoint": self.checkpoint, "val_top1": self.val_top1,
                "test_top1": self.test.top1, "test_top5": self.test.top5, "test_loss": self.test.loss,
                "test_images": self.test.images, "per_class_top1": self.test.per_class_top1,
                "classes": list(classes), "confusion_png": self.confusion_png, "seeds": self.seeds,
                "val_top1_mean": self.val_top1_mean, "val_top1_std": self.val_top1_std,
                "test_top1_mean": self.test_top1_mean, "test_top1_std": self.test_top1_std}


def evaluate_families(rows: list[dict], splits, folder: SweepFolder | os.PathLike,
                      reseeded: dict[str, list[dict]] | None = None) -> tuple[list[FamilyResult], dict[str, Any]]:
    """Test each family's pick once; write final.parquet and the confusion PNGs into the sweep folder. Returns
    the results and the tested models (on CPU), by family.

    `reseeded`: searched trial_id -> rows of its re-trained copies. With it, a family's pick is the config with
    the best mean validation top-1 over its new seeds; each copy is tested once and reported as mean ± std.
    """
    folder = folder if isinstance(folder, SweepFolder) else SweepFolder(folder)
    finals, models = [], {}
    for family, leaders in best_per_family(rows, top=len(rows)).items():
        if reseeded:
            candidates = [(leader, reseeded.get(leader["trial_id"], [])) for leader in leaders]
            candidates = [(leader, [r for r in copies if r["checkpoint"] and r["status"] in COMPLETED])
                          for leader, copies in candidates]
            candidates = [(leader, copies) for leader, copies in candidates if copies]
        if reseeded and candidates:
            leader, copies = max(candidates, key=lambda c: statistics.fmean(r["best_val_top1"] for r in c[1]))
            tested = [(copy, *loaded) for copy in copies if (loaded := _test_readable(copy, splits)) is not None]
            if not tested:
                continue
            pick, model, test = max(tested, key=lambda t: t[0]["best_val_top1"])
            vals = [r["best_val_top1"] for r in copies]
            tests = [t[2].top1 for t in tested]
            extra = dict(seeds=len(copies), val_top1_mean=statistics.fmean(vals), val_top1_std=_std(vals),
                         test_top1_mean=statistics.fmean(tests), test_top1_std=_std(tests),
                         searched_trial_id=leader["trial_id"])
        else:
            # the best trial whose checkpoint loads (one may be truncated by a crash; its run-ups stand in)
            found = next(((leader, loaded) for leader in leaders
                          if (loaded := _test_readable(leader, splits)) is not None), None)
            if found is None:
                continue
            pick, (model, test) = found
            extra = dict(searched_trial_id=pick["trial_id"], val_top1_mean=pick["best_val_top1"],
                         test_top1_mean=test.top1)
        png = confusion_file(family)
        plot_confusion(test, splits.classes, f"{family} (trial {pick['trial_id']}): test top-1 {test.top1:.2f}",
                       folder.file(png))
        finals.append(FamilyResult(family, pick["trial_id"], pick["checkpoint"], pick["best_val_top1"], test, png,
                                   **extra))
        models[family] = model
    folder.write_final([f.row(splits.classes) for f in finals])
    return finals, models


def _test_readable(row: dict, splits) -> tuple[Any, TestResult] | None:
    """test_once, or None (with a warning) when the trial's checkpoint cannot be read."""
    from trainables.errors import UserError

    try:
        return test_once(row["checkpoint"], splits)
    except UserError as exc:
        log.warning("trial %s is skipped for the test: %s", row["trial_id"], exc)
        return None


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0
