"""Models built before any trial runs: `--dry-run`'s table, and the preflight every sweep makes on the driver.

`--dry-run` samples a few configs, builds each model and runs one training step on a tiny CPU batch; it reads no
images (an .npz's array headers and labels only, for its classes and size), starts no Ray and writes nothing to
MLflow, so a space's configs are checked in seconds.
"""

from __future__ import annotations

import dataclasses

import torch
from rich.console import Console
from rich.table import Table

from trainables.config import ARCHITECTURE, TrialConfig
from trainables.data import KNOWN_SHAPES, npz_shape
from trainables.models import count_parameters, is_user_model
from tuner.spec import SweepSpec, sample_configs

FOLDER_SHAPE = (100, 64)  # an ImageNet-100 folder at the loader's default size
TINY_BATCH = 2


def dry_run(spec: SweepSpec, console: Console, samples: int = 3) -> list[dict]:
    from trainables.classify import build_model

    num_classes, stored_size, assumed = data_shape(spec)
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
        model = build_model(cfg, num_classes, torch.device("cpu"), size)
        if is_user_model(cfg.model):  # its output is checked first: a tuple or a wrong head is one clear line
            check_model_step(model, cfg.model, num_classes, size, backward=True)
        act_bytes = step_activation_bytes(model, num_classes, size)
        per_image = act_bytes / TINY_BATCH / 2 ** 20
        rows.append({"config": config, "parameters": count_parameters(model), "activation_mb_per_image": per_image})
        table.add_row(str(i), cfg.model, f"{count_parameters(model) / 1e6:.2f}", str(size), f"{per_image:.2f}",
                      f"{per_image * cfg.batch_size:.0f} (b{cfg.batch_size})",
                      " ".join(f"{k}={_short(config[k])}" for k in searched))
    console.print(table)
    if unloaded:
        console.print("pretrained weights were not loaded: a dry run builds the models with random weights")
    if assumed:
        console.print(f"{spec.dataset}: {assumed}")
    console.print("every config built and stepped: no images read, no sweep started, nothing logged")
    return rows


def data_shape(spec: SweepSpec) -> tuple[int, int, str]:
    """(classes, stored image size) of the sweep's data set for a dry run, and what was assumed ("": nothing)."""
    if spec.dataset in KNOWN_SHAPES:
        return *KNOWN_SHAPES[spec.dataset], ""
    if spec.dataset == "npz" and spec.data_dir is not None:
        return *npz_shape(spec.data_dir), ""
    classes, size = FOLDER_SHAPE
    size = spec.search_space.folder_image_size if spec.dataset == "folder" else size
    return classes, size, (f"classes and image size not read from the files: assumed {classes} classes at "
                           f"{size}px")


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
    categorical memory/architecture choices (model x image size ...) is covered, besides `samples` sampled ones.
    A user's `module:factory` model also takes one training step (forward and backward); built-in ones, known to
    train, are only run forward (a backward pass of a big net costs seconds on every sweep's start)."""
    from trainables.classify import build_model
    from tuner.packing import memory_configs

    seen = set()
    for config in sample_configs(spec, samples) + memory_configs(spec):
        cfg = TrialConfig.from_dict(config)
        key = tuple(getattr(cfg, k) for k in TrialConfig.tagged(ARCHITECTURE)) + (cfg.pretrained,)
        if key in seen:
            continue
        seen.add(key)
        size = cfg.image_size or image_size
        model = build_model(cfg, num_classes, torch.device("cpu"), size)
        check_model_step(model, cfg.model, num_classes, size, backward=is_user_model(cfg.model))


def check_model_step(model: torch.nn.Module, name: str, num_classes: int, size: int, *, backward: bool) -> None:
    """Run `model` on TINY_BATCH random images of `size` px: its output must be one (B, num_classes) tensor of
    logits; with `backward`, a training step in train mode whose loss must reach some parameter. Each way it
    fails is one UserError naming the model and the fix."""
    from trainables.errors import UserError, error_line

    x = torch.rand(TINY_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    model.train(backward)
    try:
        with torch.set_grad_enabled(backward):
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - shape errors surface as RuntimeError, AssertionError, ...
        if not backward:  # a built-in model: the image size is what can be wrong
            raise UserError(f"model {name} cannot take {size}px images ({error_line(exc, 160)}); choose "
                            f"another image_size (--set image_size=N) or model") from None
        raise UserError(f"model '{name}' failed on a batch of {TINY_BATCH} images of shape "
                        f"{(TINY_BATCH, 3, size, size)} ({error_line(exc, 160)}); its forward must take float "
                        f"images (B, 3, H, W) at image_size {size}: fix it, or choose another image_size "
                        f"(--set image_size=N)") from None
    check_logits(out, name, num_classes)
    if backward:
        check_gradients(model, out, name, num_classes)


def check_logits(out: object, name: str, num_classes: int) -> None:
    """`out` must be a float (TINY_BATCH, num_classes) tensor: one row of class logits per image."""
    from trainables.errors import UserError

    if not isinstance(out, torch.Tensor):
        raise UserError(f"model '{name}' returned a {type(out).__name__}, not a tensor of logits; its forward must "
                        f"return one tensor of shape (B, {num_classes}) (return only the logits)")
    shape = tuple(out.shape)
    if shape == (TINY_BATCH, num_classes) and out.is_floating_point():
        return
    if out.dim() == 2 and shape[0] == TINY_BATCH and out.is_floating_point():
        raise UserError(f"model '{name}' returned logits of shape {shape} for {num_classes} classes; its factory "
                        f"gets num_classes={num_classes} and must build a head of that size")
    raise UserError(f"model '{name}' returned a {str(out.dtype).removeprefix('torch.')} tensor of shape {shape} "
                    f"for a batch of {TINY_BATCH}; its forward must return float logits of shape "
                    f"({TINY_BATCH}, {num_classes}): one row per image (pool and flatten before the head)")


def check_gradients(model: torch.nn.Module, logits: torch.Tensor, name: str, num_classes: int) -> None:
    """The cross-entropy of `logits` must backpropagate, and reach at least one trainable parameter."""
    from trainables.errors import UserError, error_line

    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise UserError(f"model '{name}' has no trainable parameters (none with requires_grad); its factory must "
                        f"return a module whose parameters can be trained")
    model.zero_grad(set_to_none=True)
    unreached = (f"model '{name}': the loss reached none of its {len(trainable)} trainable parameter tensor(s); its "
                 f"forward must compute the logits from its own layers (no torch.no_grad() or .detach() on the way)")
    if not logits.requires_grad:
        raise UserError(unreached)
    try:
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.arange(TINY_BATCH) % num_classes)
        loss.backward()
    except Exception as exc:  # noqa: BLE001 - the user's backward: an in-place op, a detached output, ...
        raise UserError(f"model '{name}': the backward pass of one training step failed ({error_line(exc, 160)}); "
                        f"its logits must come from its parameters through differentiable operations (no "
                        f"torch.no_grad(), .detach() or in-place changes of saved tensors)") from None
    if all(p.grad is None for p in trainable):
        raise UserError(unreached)
