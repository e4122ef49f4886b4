"""`--gpus-per-trial auto`: measure one training step's peak GPU memory, then pack as many trials per GPU as fit.

Measured on a GPU node of the cluster (a one-GPU Ray task per distinct memory footprint), with the very loop
trials run (trainables.classify.train_epochs), so compile, AMP, channels_last and Mixup are all counted.
"""

from __future__ import annotations

import itertools
from typing import Any

from rich.console import Console

from trainables.errors import UserError
from tuner.spec import SweepSpec, sample_configs

SAFETY = 1.25  # allocator fragmentation and step-to-step variation over the measured peak
CUDA_CONTEXT_BYTES = 600 * 2 ** 20  # every trial process holds its own CUDA context (~0.5 GiB on H100s)
MAX_TRIALS_PER_GPU = 8
# keys that change a step's memory; the rest (lr, weight decay, ...) do not
MEMORY_KEYS = ("model", "batch_size", "image_size", "width", "vit_patch", "vit_depth", "vit_dim", "vit_heads",
               "vit_mlp_dim", "compile", "amp", "channels_last", "freeze_backbone", "opt")
MAX_MEASURED = 16


def trial_bytes(peak_reserved: int) -> int:
    """What one trial needs on a GPU, from its step's peak reserved memory."""
    return int(peak_reserved * SAFETY) + CUDA_CONTEXT_BYTES


def choose_packing(need_bytes: int, gpu_bytes: int, most: int = MAX_TRIALS_PER_GPU) -> int:
    """How many trials of `need_bytes` share one GPU of `gpu_bytes` (0: not even one fits)."""
    return max(0, min(most, gpu_bytes // max(need_bytes, 1)))


def memory_configs(spec: SweepSpec, most: int = MAX_MEASURED) -> list[dict[str, Any]]:
    """Configs covering every combination of the memory-relevant choices the space searches (capped at `most`),
    the other keys taken from one sampled config. Continuous memory keys are rare; a few samples cover them."""
    from ray.tune.search.sample import Categorical

    base = sample_configs(spec, 1)[0]
    space = spec.param_space()
    axes = {k: list(v.categories) for k, v in space.items() if k in MEMORY_KEYS and isinstance(v, Categorical)}
    axes.update({k: list(v["grid_search"]) for k, v in space.items()
                 if k in MEMORY_KEYS and isinstance(v, dict) and "grid_search" in v})
    configs = [{**base, **dict(zip(axes, combo))} for combo in itertools.product(*axes.values())]
    configs += sample_configs(spec, 4)  # continuous memory keys, if any
    unique, seen = [], set()
    for config in configs:
        key = tuple((k, repr(config.get(k))) for k in MEMORY_KEYS)
        if key not in seen:
            seen.add(key)
            unique.append(config)
    return unique[:most]


def measure_peak_bytes(config: dict[str, Any], num_classes: int, image_size: int) -> int:
    """Peak reserved CUDA memory of one training step (and one validation batch) of `config`, on this GPU."""
    import numpy as np
    import torch

    from trainables.classify import train_epochs
    from trainables.config import TrialConfig
    from trainables.data import ImageSplits

    cfg = TrialConfig.from_dict({**config, "max_epochs": 1, "pretrained": ""})  # weights do not change memory
    n = cfg.batch_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, image_size, image_size), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int64) % num_classes
    splits = ImageSplits("probe", tuple(str(c) for c in range(num_classes)), images, labels, images[:2],
                         labels[:2], None, None, (0.5,) * 3, (0.25,) * 3)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    for _ in train_epochs(cfg, splits, device=torch.device("cuda")):
        pass
    return int(torch.cuda.max_memory_reserved())


def _gpu_total_bytes() -> int:
    import torch

    return int(torch.cuda.get_device_properties(0).total_memory)


def resolve_gpus_per_trial(spec: SweepSpec, num_classes: int, image_size: int, console: Console) -> float:
    """The GPU fraction per trial for `auto`: 0 on a cluster without GPUs, else 1/k with k the most trials of the
    largest measured config that fit one of its GPUs. A config that fits no GPU is a UserError now."""
    import ray

    if not any(n["Resources"].get("GPU", 0) for n in ray.nodes() if n.get("Alive")):
        console.print("--gpus-per-trial auto: the Ray cluster has no GPU, so trials train on CPU")
        return 0.0
    measure = ray.remote(num_gpus=1)(measure_peak_bytes)
    configs = memory_configs(spec)
    peaks = ray.get([measure.remote(c, num_classes, c.get("image_size") or image_size) for c in configs])
    gpu_bytes = ray.get(ray.remote(num_gpus=1)(_gpu_total_bytes).remote())
    worst, peak = max(zip(configs, peaks), key=lambda pair: pair[1])
    need = trial_bytes(peak)
    per_gpu = choose_packing(need, gpu_bytes)
    if per_gpu == 0:
        raise UserError(f"--gpus-per-trial auto: model {worst['model']} at batch {worst['batch_size']} needs about "
                        f"{need / 2 ** 30:.1f} GiB per trial, more than the GPU's {gpu_bytes / 2 ** 30:.0f} GiB; "
                        f"lower --set batch_size or image_size, or use a larger GPU")
    fraction = round(1.0 / per_gpu, 4)
    console.print(f"--gpus-per-trial auto: {len(configs)} config(s) measured, the largest step peaks at "
                  f"{peak / 2 ** 30:.2f} GiB ({worst['model']}, batch {worst['batch_size']}); {per_gpu} trial(s) "
                  f"per {gpu_bytes / 2 ** 30:.0f} GiB GPU -> --gpus-per-trial {fraction:g}")
    return fraction
