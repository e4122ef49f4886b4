"""Models built before any trial runs: `--dry-run`'s table, and the preflight every sweep makes on the driver.

`--dry-run` samples a few configs, builds each model and runs one training step on a tiny CPU batch; it touches
no data files, starts no Ray and writes nothing to MLflow, so a space's configs are checked in seconds.
"""

from __future__ import annotations

import dataclasses

import torch
from rich.console import Console
from rich.table import Table

from trainables.config import ARCHITECTURE, TrialConfig
from trainables.data import KNOWN_SHAPES
from trainables.models import count_parameters
from tuner.spec import SweepSpec, sample_configs

FOLDER_SHAPE = (100, 64)  # an ImageNet-100 folder at the loader's default size
TINY_BATCH = 2


def dry_run(spec: SweepSpec, console: Console, samples: int = 3) -> list[dict]:
    from trainables.classify import build_model

    num_classes, stored_size = KNOWN_SHAPES.get(spec.dataset, FOLDER_SHAPE)
    table = Table(title=f"dry run of {spec.space} on {spec.dataset}: {samples} sampled configs, one CPU step each")
    for column in ("#", "model", "params (M)", "img", "act. MB/img", "act. MB/batch", "searched values"):
        table.add_column(column, justify="right" if column != "searched values" else "left")
    searched = spec.searched_keys()
    rows = []
    unloaded = False
    for i, config in enumerate(sample_configs(spec, samples)):
        cfg = TrialConfig.from_dict(config)
        if cfg.pretrained or spec.search_space.requires.get("pretrained"):
            cfg, unloaded = dataclasses.replace(cfg, pretrained=""), True  # weights change nothing checked here
        size = cfg.image_size or stored_size
        model = build_model(cfg, num_classes, torch.device("cpu"))
        act_bytes = step_activation_bytes(model, num_classes, size)
        per_image = act_bytes / TINY_BATCH / 2 ** 20
        rows.append({"config": config, "parameters": count_parameters(model), "activation_mb_per_image": per_image})
        table.add_row(str(i), cfg.model, f"{count_parameters(model) / 1e6:.2f}", str(size), f"{per_image:.2f}",
                      f"{per_image * cfg.batch_size:.0f} (b{cfg.batch_size})",
                      " ".join(f"{k}={_short(config[k])}" for k in searched))
    console.print(table)
    if unloaded:
        console.print("pretrained weights were not loaded: a dry run builds the models with random weights")
    console.print("every config built and stepped: no data read, no sweep started, nothing logged")
    return rows


def step_activation_bytes(model: torch.nn.Module, num_classes: int, size: int) -> int:
    """Bytes of tensors autograd saves for backward in one training step (the activation memory)."""
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = (t.untyped_storage().data_ptr(), t.dtype, tuple(t.shape))
        seen[key] = t.numel() * t.element_size()
        return t

    model.train()
    x = torch.randn(TINY_BATCH, 3, size, size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(x), torch.arange(TINY_BATCH) % num_classes)
    loss.backward()
    return sum(seen.values())


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def preflight_models(spec: SweepSpec, num_classes: int, image_size: int, samples: int = 8) -> None:
    """Build each distinct model a sweep samples (and load its pretrained weights) on the driver, and run it on a
    two-image batch at its image size, so a model that cannot be built, a weights file that does not fit or an image
    size a model cannot take is one clear line now, not a failed trial later. Every combination of the space's
    categorical memory/architecture choices (model x image size ...) is covered, besides `samples` sampled ones."""
    from trainables.classify import build_model
    from trainables.errors import UserError, error_line
    from tuner.packing import memory_configs

    seen = set()
    for config in sample_configs(spec, samples) + memory_configs(spec):
        cfg = TrialConfig.from_dict(config)
        key = tuple(getattr(cfg, k) for k in TrialConfig.tagged(ARCHITECTURE)) + (cfg.pretrained,)
        if key in seen:
            continue
        seen.add(key)
        size = cfg.image_size or image_size
        model = build_model(cfg, num_classes, torch.device("cpu"), size).eval()
        try:
            with torch.no_grad():
                model(torch.zeros(TINY_BATCH, 3, size, size))
        except Exception as exc:  # noqa: BLE001 - shape errors surface as RuntimeError, AssertionError, ...
            raise UserError(f"model {cfg.model} cannot take {size}px images ({error_line(exc, 160)}); choose "
                            f"another image_size (--set image_size=N) or model") from None
