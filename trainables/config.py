"""Trial config: one flat dict of knobs, validated into a frozen dataclass.

Every knob has one name used everywhere: `--set KEY=VALUE`, search spaces, MLflow params
and Parquet columns. Each field's metadata says what values it accepts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from trainables.errors import UserError


HUB = "hub"  # pretrained=hub: the model's published weights, fetched and cached by timm or torchvision


# Tags say what a knob is to the rest of the tool, so no module keeps its own list of keys:
ARCHITECTURE = "architecture"  # shapes the network: a checkpoint loads only into the same values (stages, preflight)
MEMORY = "memory"  # changes a training step's memory (packing measures one config per combination)
LOG_SCALE = "log_scale"  # spans orders of magnitude: drawn and modelled on a log axis (the report)
PROVENANCE = "provenance"  # says where a trial came from, not how it trains (seed, weights): never a searched axis
TAGS = (ARCHITECTURE, MEMORY, LOG_SCALE, PROVENANCE)
SHAPE = (ARCHITECTURE, MEMORY)  # every architecture knob changes memory too


def _knob(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None,
          max: float | None = None, tags: tuple[str, ...] = (), check: Callable[[Any], None] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, "min": min, "max": max,
                                            "tags": frozenset(tags), "check": check})


def check_model(name: str) -> None:
    """A model value is checked with the other values (--set, a space file, a trial's config), not at preflight
    after the data loaded: a registered name, timm/<name> that timm knows, or package.module:factory written as
    one (imported at preflight, on the driver: a user's module may be slow or have side effects)."""
    from trainables.models import create_model, is_user_model, list_models  # torch: only once a model is named

    if is_user_model(name):
        module, _, factory = name.partition(":")
        if not (all(part.isidentifier() for part in module.split(".")) and factory.isidentifier()):
            raise UserError(f"model '{name}': write package.module:factory, e.g. mypkg.nets:build")
        return
    if name.startswith("timm/"):
        import timm

        known = timm.is_model(name.removeprefix("timm/"))
    else:
        known = name in list_models()
    if not known:
        try:  # create_model refuses the name before building anything: its line, in one wording everywhere
            create_model(name, num_classes=2)
        except UserError as error:
            names = [m for m in list_models() if "/" not in m and ":" not in m]  # not the two patterns
            close = difflib.get_close_matches(name, names, n=1) if "/" not in name else []
            raise UserError(f"{error}{f' (did you mean {close[0]!r}?)' if close else ''}") from None


@dataclass(frozen=True)
class TrialConfig:
    # model
    model: str = _knob("resnet18", "model name: a registered one (see trainables.models), timm/<name>, or your own "
                                   "package.module:factory", tags=SHAPE, check=check_model)
    width: float = _knob(1.0, "channel width multiplier of the built-in CIFAR nets", min=0.05, max=8.0, tags=SHAPE)
    drop_rate: float = _knob(0.0, "dropout before the classifier", min=0.0, max=0.95)
    drop_path: float = _knob(0.0, "stochastic depth (drop-path) rate", min=0.0, max=0.95)
    vit_patch: int = _knob(4, "vit_scratch: patch size in pixels (must divide the image size)", min=1, max=64,
                           tags=SHAPE)
    vit_depth: int = _knob(6, "vit_scratch: number of transformer blocks", min=1, max=48, tags=SHAPE)
    vit_dim: int = _knob(192, "vit_scratch: embedding width (a multiple of vit_heads)", min=8, max=4096, tags=SHAPE)
    vit_heads: int = _knob(3, "vit_scratch: attention heads", min=1, max=64, tags=SHAPE)
    vit_mlp_dim: int = _knob(0, "vit_scratch: hidden width of the MLP blocks (0: 4 x vit_dim)", min=0, max=16_384,
                             tags=SHAPE)
    # pretrained weights (a local file; nothing is downloaded)
    pretrained: str = _knob("", "weights to start from: a local .safetensors/.pt/.pth state dict, a folder holding "
                                "<model>.safetensors|.pth|.pt, or 'hub' for the model's published weights through "
                                "timm/torchvision (downloaded once into their caches); '': random init. Another class "
                                "count's head is re-initialised", tags=(PROVENANCE,))
    freeze_backbone: bool = _knob(False, "train only the classifier head (backbone weights and BN statistics fixed)",
                                  tags=(MEMORY,))
    layer_decay: float = _knob(0.0, "layer-wise LR decay factor, e.g. 0.75 (timm layer_decay; 0: off)", min=0.0,
                               max=1.0)
    # schedule and batch
    max_epochs: int = _knob(10, "epochs of the LR schedule; ASHA may stop a trial sooner (CLI: --max-epochs)", min=1,
                            max=10_000)
    batch_size: int = _knob(128, "training batch size", min=2, max=65_536, tags=(MEMORY,))
    val_every: int = _knob(1, "validate every this many epochs, and always on the last one", min=1, max=10_000)
    patience: int = _knob(0, "stop early after this many validations without a new best val_top1 (0: off)", min=0,
                          max=10_000)
    # optimizer (timm create_optimizer_v2)
    opt: str = _knob("adamw", "optimizer", choices=("sgd", "adamw", "lamb"), tags=(MEMORY,))
    lr: float = _knob(1e-3, "peak learning rate", min=1e-8, max=10.0, tags=(LOG_SCALE,))
    weight_decay: float = _knob(0.05, "decoupled weight decay (not on biases and norms)", min=0.0, max=10.0,
                                tags=(LOG_SCALE,))
    momentum: float = _knob(0.9, "SGD momentum", min=0.0, max=0.9999)
    nesterov: bool = _knob(False, "Nesterov momentum for SGD")
    grad_clip: float = _knob(0.0, "clip the gradient norm to this value (0: off)", min=0.0)
    # learning-rate schedule (timm create_scheduler_v2), stepped every update
    sched: str = _knob("cosine", "learning-rate schedule", choices=("cosine", "step", "exponential", "constant"))
    warmup_epochs: float = _knob(0.0, "linear warmup length in epochs", min=0.0, max=1000.0)
    min_lr: float = _knob(0.0, "floor of the cosine schedule", min=0.0, tags=(LOG_SCALE,))
    gamma: float = _knob(0.97, "decay factor of the step/exponential schedules", min=1e-6, max=1.0)
    step_epochs: int = _knob(30, "epochs between decays of the step schedule", min=1)
    # loss and label mixing (timm losses and Mixup)
    loss: str = _knob("ce", "loss: cross-entropy or binary cross-entropy (RSB)", choices=("ce", "bce"))
    label_smoothing: float = _knob(0.0, "label smoothing", min=0.0, max=0.5)
    bce_target_thresh: float = _knob(0.0, "binarise BCE targets above this value (RSB uses 0.2; 0: off)", min=0.0, max=1.0)
    mixup_alpha: float = _knob(0.0, "Mixup beta-distribution alpha (0: off)", min=0.0, max=10.0)
    cutmix_alpha: float = _knob(0.0, "CutMix beta-distribution alpha (0: off)", min=0.0, max=10.0)
    mix_prob: float = _knob(1.0, "probability of applying Mixup/CutMix to a batch", min=0.0, max=1.0)
    mix_switch_prob: float = _knob(0.5, "probability of CutMix instead of Mixup when both are on", min=0.0, max=1.0)
    # augmentation (batched, on the training device)
    augment: bool = _knob(True, "master switch: false turns off every image augmentation below (an ablation axis)")
    crop_padding: int = _knob(4, "random-crop padding in pixels (0: no crop)", min=0, max=64)
    hflip: bool = _knob(True, "random horizontal flip")
    image_size: int = _knob(0, "resize images to this size on the device (0: the data set's size)", min=0, max=1024,
                            tags=SHAPE)
    rotation: float = _knob(0.0, "random rotation by up to this many degrees either way (0: off)", min=0.0, max=180.0)
    randaugment_magnitude: float = _knob(0.0, "RandAugment magnitude on torchvision's 0-30 scale, e.g. 9 (0: off)",
                                         min=0.0, max=30.0)
    randaugment_ops: int = _knob(2, "RandAugment operations applied per image", min=1, max=14)
    randaugment_mstd: float = _knob(0.0, "std of RandAugment's magnitude, drawn anew for each group of images, on the "
                                         "same 0-30 scale (timm's mstd x 3: RSB's mstd0.5 is 1.5; 0: fixed)",
                                    min=0.0, max=30.0)
    random_erasing: float = _knob(0.0, "probability of erasing a random box per image with noise (0: off)", min=0.0,
                                  max=1.0)
    repeat_aug: int = _knob(1, "repeated augmentation: each epoch shows n/k images k times each, differently augmented, "
                               "in the same batch (DeiT; RSB A1/A2 use 3; 1: off)", min=1, max=16)
    # runtime
    seed: int = _knob(0, "trial seed (weights init, data order, augmentation)", min=0, tags=(PROVENANCE,))
    amp: bool = _knob(True, "bf16 autocast on CUDA (ignored on CPU)", tags=(MEMORY,))
    channels_last: bool = _knob(True, "channels_last memory format on CUDA (ignored on CPU)", tags=(MEMORY,))
    compile: bool = _knob(False, "torch.compile the model", tags=(MEMORY,))

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def tagged(cls, tag: str) -> tuple[str, ...]:
        """The keys carrying `tag` (ARCHITECTURE, MEMORY, LOG_SCALE, PROVENANCE), in field order."""
        if tag not in TAGS:
            raise ValueError(f"unknown knob tag {tag!r}; tags: {', '.join(TAGS)}")
        return tuple(f.name for f in dataclasses.fields(cls) if tag in f.metadata["tags"])

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "TrialConfig":
        """Validate a flat dict (from a search space, `--set` or Ray Tune) into a config."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in raw.items():
            if key not in fields:
                raise UserError(unknown_key_message(key))
            values[key] = coerce(fields[key], value)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, TrialConfig.keys(), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown config key '{key}'{hint}; known keys: {', '.join(TrialConfig.keys())}"


def parse_value(key: str, text: str) -> Any:
    """Parse the text of `--set KEY=VALUE` into the type of KEY."""
    fields = {f.name: f for f in dataclasses.fields(TrialConfig)}
    if key not in fields:
        raise UserError(unknown_key_message(key))
    return coerce(fields[key], text)


def coerce(f: dataclasses.Field, value: Any) -> Any:
    """Convert `value` to the field's type and check it against the field's limits."""
    kind = type(f.default)
    meta = f.metadata
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars from samplers
        value = value.item()
    try:
        if kind is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError
                value = lowered in ("true", "1", "yes", "on")
            elif isinstance(value, (bool, int)) and value in (0, 1):
                value = bool(value)
            else:
                raise ValueError
        elif kind is int:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, bool) or float(number) != int(float(number)):
                raise ValueError
            value = int(float(number))
        elif kind is float:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
            if not math.isfinite(value):
                raise ValueError
        else:
            value = str(value)
    except (TypeError, ValueError):
        article = "an" if kind is int else "a"
        raise UserError(f"config key '{f.name}' needs {article} {kind.__name__}, got {value!r} ({meta['help']})") from None
    if meta["choices"] is not None and value not in meta["choices"]:
        raise UserError(f"config key '{f.name}' got {value!r}; allowed values: {', '.join(meta['choices'])}")
    low, high = meta["min"], meta["max"]
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise UserError(f"config key '{f.name}' got {value!r}; it must lie in {bounds}")
    if meta.get("check") is not None:  # what a type and a range cannot say (a model's name)
        meta["check"](value)
    return value
