"""Which configs of a space are measured before a sweep (tuner.packing's memory probes, tuner.dryrun's preflight,
tuner.costs' footprints), and the space's batch sizes checked against the data.

A space can sample far more combinations of its memory-relevant knobs than are worth measuring (vit_scratch: 288).
When there are more than the cap, those measured are chosen so that the ones that matter are certainly in:
each model family's largest (by a cheap analytic estimate of a training step's memory: the request is the largest
measured peak), every value of every knob at least once (at the largest of the others), every model with every
value, then the rest by estimate.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Callable

from trainables.config import MEMORY, TrialConfig
from trainables.errors import UserError

if TYPE_CHECKING:
    from tuner.spec import SweepSpec

MEMORY_KEYS = TrialConfig.tagged(MEMORY)  # keys that change a step's memory; the rest (lr, ...) do not
MAX_MEASURED = 16  # measuring takes a training step each: the cap keeps the sweep's start short
_DEFAULTS = TrialConfig()


def memory_configs(spec: SweepSpec, most: int = MAX_MEASURED,
                   keys: tuple[str, ...] = MEMORY_KEYS) -> list[dict[str, Any]]:
    """Configs covering every combination of the memory-relevant choices the space searches, the other keys taken
    from one sampled config; continuous memory keys are rare, a few samples cover them. More combinations than
    `most`: `most` of them, chosen by `most_telling` (the largest of each model among them).
    `keys`: another set of footprint keys (tuner.costs: the architecture keys, which set inference cost)."""
    from tuner.spec import sample_configs

    base = sample_configs(spec, 1)[0]
    axes = memory_axes(spec.param_space(), keys)
    configs = [{**base, **dict(zip(axes, combo))} for combo in itertools.product(*axes.values())]
    configs += sample_configs(spec, 4)  # continuous memory keys, if any
    unique, seen = [], set()
    for config in configs:
        key = footprint_of(config, keys)
        if key not in seen:
            seen.add(key)
            unique.append(config)
    return unique if len(unique) <= most else most_telling(unique, axes, most)


def footprint_of(config: dict[str, Any], keys: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The values of `keys` that make this config's model what it is: a shape knob the model is not built with
    (width for a ViT, vit_* for a CNN, either for timm's nets and a user's) is left out, so it is measured once."""
    from trainables.models import SHAPE_KNOBS, shape_knobs

    reads = shape_knobs(str(config.get("model") or _DEFAULTS.model))
    return tuple((k, repr(config.get(k))) for k in keys if k not in SHAPE_KNOBS or k in reads)


def memory_axes(space: dict[str, Any], keys: tuple[str, ...]) -> dict[str, list]:
    """The values each searched memory key takes: a choice's or a grid's, a numeric range's two ends."""
    from ray.tune.search.sample import Categorical

    axes = {k: list(v.categories) for k, v in space.items() if k in keys and isinstance(v, Categorical)}
    axes.update({k: list(v["grid_search"]) for k, v in space.items()
                 if k in keys and isinstance(v, dict) and "grid_search" in v})
    axes.update({k: list(domain_ends(v)) for k, v in space.items() if k in keys and k not in axes
                 and domain_ends(v)})  # memory grows monotonically in batch, size, width: the ends bound it
    return axes


def most_telling(configs: list[dict[str, Any]], axes: dict[str, list], most: int) -> list[dict[str, Any]]:
    """`most` of `configs`, in this order of need: each model's largest (the request is the largest measured peak;
    families compare badly by estimate, so each gets its own), every value of every axis at its largest, every
    model with every value (so preflight builds each model at each size), each model's smallest, then the rest."""
    ranked = sorted(configs, key=memory_estimate, reverse=True)  # stable: ties keep the product's order
    models = sorted({repr(c.get("model")) for c in configs},
                    key=lambda m: -max(memory_estimate(c) for c in configs if repr(c.get("model")) == m))
    of = lambda model: [c for c in ranked if repr(c.get("model")) == model]  # noqa: E731
    has = lambda key, value: lambda c: repr(c.get(key)) == repr(value)  # noqa: E731
    picks: list[dict[str, Any]] = []
    stages: list[tuple[list[dict], Callable[[dict], bool]]] = [(of(m), lambda c: True) for m in models]
    stages += [(ranked, has(k, v)) for k, values in axes.items() for v in values]
    stages += [(of(m), has(k, v)) for m in models for k, values in axes.items() if k != "model" for v in values]
    stages += [(of(m)[::-1], lambda c: True) for m in models]
    for pool, wanted in stages:
        found = next((c for c in pool if wanted(c)), None)  # the largest that has it: covered already, or added
        if found is not None and not any(found is p for p in picks) and len(picks) < most:
            picks.append(found)
    picks += [c for c in ranked if not any(c is p for p in picks)][:most - len(picks)]
    return picks


def memory_estimate(config: dict[str, Any], image_size: int = 32) -> float:
    """A rough training step's bytes (activations kept for backward, weights, gradients, optimizer state) from the
    config alone, for ranking footprints within a model family: monotone in every knob the way memory is (bigger
    batch, image, width, depth, dim, heads, MLP; smaller patch; adam over sgd; unfrozen; no autocast)."""
    get = lambda key: config.get(key) if config.get(key) not in (None, "") else getattr(_DEFAULTS, key)  # noqa
    batch, size = float(get("batch_size")), float(get("image_size") or image_size)
    if "vit" in str(get("model")):
        dim, depth, heads = float(get("vit_dim")), float(get("vit_depth")), float(get("vit_heads"))
        mlp = float(get("vit_mlp_dim") or 4 * dim)
        tokens = (size // max(int(get("vit_patch")), 1)) ** 2 + 1
        activations = batch * depth * tokens * (8 * dim + 2 * mlp + 3 * heads * tokens)
        params = depth * (4 * dim * dim + 2 * dim * mlp)
    else:  # a CNN: activations scale with pixels and channels, weights with channels squared
        width = float(get("width"))
        activations = batch * size * size * 512 * width
        params = 11e6 * width * width
    states = 1.0 if get("opt") == "sgd" else 2.0
    trained = 0.25 if get("freeze_backbone") else 1.0
    precision = 0.75 if get("amp") else 1.0  # bf16 activations on a GPU (CPU ignores it: ties do no harm)
    return 4.0 * (activations * trained * precision + params * (2.0 + states * trained))


def domain_ends(domain) -> tuple:
    """(smallest, largest) value a numeric Ray Tune domain samples; () for anything else."""
    from ray.tune.search.sample import Float, Integer, Quantized

    if isinstance(domain, Integer):  # randint's upper bound is exclusive, qrandint's inclusive
        top = domain.upper if isinstance(domain.get_sampler(), Quantized) else domain.upper - 1
        return (domain.lower, top)
    if isinstance(domain, Float):
        return (domain.lower, domain.upper)
    return ()


def check_batch_sizes(spec: SweepSpec, train_images: int) -> None:
    """A batch larger than the training split leaves a trial no update to make: refused for the space's whole range
    (fixed, a choice, a grid or a numeric range), before any trial starts."""
    from ray.tune.search.sample import Categorical

    value = spec.param_space().get("batch_size", TrialConfig().batch_size)
    if isinstance(value, Categorical):
        largest = max(value.categories)
    elif isinstance(value, dict) and "grid_search" in value:
        largest = max(value["grid_search"])
    else:
        largest = domain_ends(value)[-1] if domain_ends(value) else value
    if largest > train_images:
        searched = "" if isinstance(value, int) else " (the largest the space samples)"
        raise UserError(f"batch_size {largest}{searched} exceeds the {train_images} training images (after the "
                        f"validation split); lower it, e.g. --set batch_size={max(2, min(128, train_images // 4))}")
