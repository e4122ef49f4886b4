"""Model registry: small CIFAR nets of our own, CIFAR-stem ResNets built from timm, ImageNet nets, any timm model.

    create_model("resnet50", num_classes=100, width=0.5)
    create_model("vit_scratch", num_classes=10, image_size=32, vit_patch=4, vit_depth=6)
    create_model("timm/convnext_atto", num_classes=10, image_size=64)

Every factory takes the same keyword arguments and ignores those that do not apply to it: `width` scales the
CIFAR nets (cnn_basic, resnet*, vgg16_bn), `vit_*` shape vit_scratch, and `image_size` (the size the model will
see) sets the input size of the transformers. create_model always returns fresh weights; load_pretrained and
freeze_backbone then adapt it.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import torch
from torch import nn

from trainables.errors import UserError, error_line

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}
# The shape knobs each model is built with (capabilities as data, as in timm's registry): a knob a model ignores
# does not make another model, so memory probes, preflight and deployment costs measure it once.
WIDTH = ("width",)
VIT_SHAPE = ("vit_patch", "vit_depth", "vit_dim", "vit_heads", "vit_mlp_dim")
SHAPE_KNOBS = WIDTH + VIT_SHAPE
_READS: dict[str, frozenset[str]] = {}


def register_model(name: str, reads: tuple[str, ...] = ()) -> Callable[[ModelFactory], ModelFactory]:
    """Register `factory` as `name`; `reads`: the shape knobs (of SHAPE_KNOBS) it is built with."""
    def add(factory: ModelFactory) -> ModelFactory:
        _REGISTRY[name] = factory
        _READS[name] = frozenset(reads)
        return factory

    return add


def shape_knobs(name: str) -> frozenset[str]:
    """The shape knobs model `name` is built with: width for our CIFAR nets, vit_* for vit_scratch; none for the
    ImageNet nets, timm/<name> and a user's factory (which gets num_classes and image_size only)."""
    return _READS.get(name, frozenset())


def list_models() -> list[str]:
    return sorted(_REGISTRY) + ["timm/<name>", "module:factory"]


def is_user_model(name: str) -> bool:
    """`package.module:factory`: a model from the user's own code."""
    return ":" in name and not name.startswith("timm/")


def user_model_module(name: str) -> str:
    return name.partition(":")[0]


def _user_model(name: str, num_classes: int, image_size: int) -> nn.Module:
    """Call the user's `module:factory(num_classes=..., image_size=...)`; every way it can go wrong is one line."""
    import importlib

    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise UserError(f"model '{name}': write package.module:factory, e.g. mypkg.nets:build")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - ModuleNotFoundError, or the module's own import-time error
        where = "; put its folder on PYTHONPATH or run from the folder holding it" \
            if isinstance(exc, ModuleNotFoundError) else ""
        raise UserError(f"model '{name}': cannot import {module_name} ({error_line(exc, 160)}){where}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"model '{name}': {module_name} has no callable '{attr}'"
                        + (f" (it is a {type(factory).__name__})" if factory is not None else ""))
    try:
        model = factory(num_classes=num_classes, image_size=image_size)
    except Exception as exc:  # noqa: BLE001 - the user's code: its error, in one line
        raise UserError(f"model '{name}': {attr}(num_classes={num_classes}, image_size={image_size}) raised "
                        f"{error_line(exc, 200)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model '{name}': {attr}(...) returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def create_model(name: str, num_classes: int, *, image_size: int = 32, width: float = 1.0, drop_rate: float = 0.0,
                 drop_path: float = 0.0, vit_patch: int = 4, vit_depth: int = 6, vit_dim: int = 192,
                 vit_heads: int = 3, vit_mlp_dim: int = 0) -> nn.Module:
    """Build a freshly initialised model by name, for `image_size` x `image_size` inputs."""
    if name.startswith("timm/"):
        import timm

        timm_name = name.removeprefix("timm/")
        if not timm.is_model(timm_name):
            raise UserError(f"timm has no model '{timm_name}'; list them with python -c \"import timm; "
                            f"print(timm.list_models('*{timm_name[:4]}*'))\"")
        model = _timm_model(timm_name, num_classes, image_size, drop_rate, drop_path)
    elif name in _REGISTRY:
        model = _REGISTRY[name](num_classes=num_classes, image_size=image_size, width=width, drop_rate=drop_rate,
                                drop_path=drop_path, vit_patch=vit_patch, vit_depth=vit_depth, vit_dim=vit_dim,
                                vit_heads=vit_heads, vit_mlp_dim=vit_mlp_dim)
    elif is_user_model(name):
        model = _user_model(name, num_classes, image_size)
    else:
        raise UserError(f"unknown model '{name}'; choose one of: {', '.join(list_models())} (your own: "
                        f"--set model=package.module:factory)")
    if not hasattr(model, "group_matcher") and not getattr(model, "pretrained_cfg", {}).get("classifier"):
        # timm's layer_decay groups a model without group_matcher() by this hint, else it puts all in one group
        model.pretrained_cfg = {"classifier": _head_of(model, name)}
    return model


def _head_of(model: nn.Module, name: str) -> str:
    """classifier_name, with a user model's missing head said against its `module:factory`."""
    try:
        return classifier_name(model)
    except UserError:
        if not is_user_model(name):
            raise
        raise UserError(f"model '{name}': cannot tell its classifier head (it has no nn.Linear layer, "
                        f"get_classifier() or .fc); end it with an nn.Linear(features, num_classes)") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _scaled(channels: int, width: float) -> int:
    return max(8, int(round(channels * width / 8)) * 8)  # multiples of 8 keep tensor cores busy


def _timm_model(timm_name: str, num_classes: int, image_size: int, drop_rate: float, drop_path: float) -> nn.Module:
    """A timm model; transformers (those taking img_size) are built for `image_size`, conv nets take any size."""
    import timm

    kwargs = dict(pretrained=False, num_classes=num_classes, drop_rate=drop_rate, drop_path_rate=drop_path)
    try:
        try:
            return timm.create_model(timm_name, img_size=image_size, **kwargs)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
            return timm.create_model(timm_name, **kwargs)
    except (AssertionError, ValueError, RuntimeError) as exc:
        raise UserError(f"timm model '{timm_name}' cannot be built for {image_size}px images: "
                        f"{error_line(exc)}") from None


def _timm_alias(timm_name: str) -> ModelFactory:
    def build(num_classes: int, *, image_size: int = 32, drop_rate: float = 0.0, drop_path: float = 0.0,
              **_: Any) -> nn.Module:
        return _timm_model(timm_name, num_classes, image_size, drop_rate, drop_path)

    build.__doc__ = f"timm's {timm_name}, randomly initialised"
    build.timm_name = timm_name
    return build


@register_model("cnn_basic", reads=WIDTH)
def cnn_basic(num_classes: int, *, width: float = 1.0, drop_rate: float = 0.0, **_: Any) -> nn.Module:
    """The seed CIFAR-10 study's CNN: three blocks of two conv-BN-GELU layers, max-pool and dropout."""
    layers: list[nn.Module] = []
    in_ch = 3
    for out_ch in (_scaled(c, width) for c in (32, 64, 128)):
        layers += [
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.GELU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.GELU(),
            nn.MaxPool2d(2), nn.Dropout(drop_rate * 0.5),
        ]
        in_ch = out_ch
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(drop_rate),
                         nn.Linear(in_ch, num_classes))


def _cifar_resnet(block: str, layers: tuple[int, ...]) -> ModelFactory:
    def build(num_classes: int, *, width: float = 1.0, drop_rate: float = 0.0, drop_path: float = 0.0,
              **_: Any) -> nn.Module:
        """timm's ResNet with a CIFAR stem: one 3x3 stride-1 conv, no max-pool, so 32x32 inputs keep detail."""
        from timm.models.resnet import BasicBlock, Bottleneck, ResNet

        model = ResNet(block=BasicBlock if block == "basic" else Bottleneck, layers=layers, num_classes=num_classes,
                       channels=tuple(_scaled(c, width) for c in (64, 128, 256, 512)),
                       drop_rate=drop_rate, drop_path_rate=drop_path)
        # timm's plain stem is always 64 wide; only its kernel and stride change here
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        return model

    return build


register_model("resnet18", reads=WIDTH)(_cifar_resnet("basic", (2, 2, 2, 2)))
register_model("resnet34", reads=WIDTH)(_cifar_resnet("basic", (3, 4, 6, 3)))
register_model("resnet50", reads=WIDTH)(_cifar_resnet("bottleneck", (3, 4, 6, 3)))


def _imagenet_resnet(arch: str) -> ModelFactory:
    def build(num_classes: int, **_: Any) -> nn.Module:
        """torchvision's ResNet as published (7x7 stride-2 stem and max-pool), randomly initialised."""
        import torchvision

        return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)

    build.torchvision_arch = arch  # pretrained=hub fetches torchvision's published weights of this architecture
    return build


register_model("resnet18_imagenet")(_imagenet_resnet("resnet18"))
register_model("resnet34_imagenet")(_imagenet_resnet("resnet34"))
register_model("resnet50_imagenet")(_imagenet_resnet("resnet50"))

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class CifarVGG(nn.Module):
    """torchvision's VGG-16-BN feature stack (same layers and names) with a small head for 32x32 inputs.

    Five max-pools leave 1x1 at 32 px, so the head is dropout and one linear layer instead of the 4096-wide MLP.
    """

    def __init__(self, num_classes: int, width: float = 1.0, drop_rate: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in _VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out_ch = _scaled(int(v), width)
                layers += [nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.BatchNorm2d(out_ch),
                           nn.ReLU(inplace=True)]
                in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(in_ch, num_classes))
        for m in self.modules():  # torchvision's VGG init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model("vgg16_bn", reads=WIDTH)
def vgg16_bn(num_classes: int, *, width: float = 1.0, drop_rate: float = 0.0, **_: Any) -> nn.Module:
    return CifarVGG(num_classes, width=width, drop_rate=drop_rate)


@register_model("vit_scratch", reads=VIT_SHAPE)
def vit_scratch(num_classes: int, *, image_size: int = 32, drop_rate: float = 0.0, drop_path: float = 0.0,
                vit_patch: int = 4, vit_depth: int = 6, vit_dim: int = 192, vit_heads: int = 3, vit_mlp_dim: int = 0,
                **_: Any) -> nn.Module:
    """A small ViT for training from scratch (timm's VisionTransformer), shaped by the vit_* knobs."""
    from timm.models.vision_transformer import VisionTransformer

    if image_size % vit_patch:
        raise UserError(f"vit_patch {vit_patch} does not divide the image size {image_size}; pick a divisor "
                        f"(or set image_size)")
    if vit_dim % vit_heads:
        raise UserError(f"vit_dim {vit_dim} is not a multiple of vit_heads {vit_heads}")
    mlp_dim = vit_mlp_dim or 4 * vit_dim
    return VisionTransformer(img_size=image_size, patch_size=vit_patch, num_classes=num_classes, embed_dim=vit_dim,
                             depth=vit_depth, num_heads=vit_heads,
                             mlp_ratio=(mlp_dim + 0.5) / vit_dim,  # timm truncates embed_dim * mlp_ratio
                             drop_rate=drop_rate, drop_path_rate=drop_path)


register_model("swin_t")(_timm_alias("swin_tiny_patch4_window7_224"))
register_model("efficientnet_b0")(_timm_alias("efficientnet_b0"))
register_model("mobilenetv3")(_timm_alias("mobilenetv3_large_100"))
register_model("deit_tiny")(_timm_alias("deit_tiny_patch16_224"))
register_model("vit_s")(_timm_alias("vit_small_patch16_224"))
register_model("vit_b")(_timm_alias("vit_base_patch16_224"))


def classifier_name(model: nn.Module) -> str:
    """Module name of the final classifier layer: timm's get_classifier(), torchvision's `.fc`, else the last Linear."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else getattr(model, "fc", None)
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        head = next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)
    for name, module in model.named_modules():
        if head is not None and module is head:
            return name
    raise UserError(f"cannot tell the classifier head of {type(model).__name__}")


def _in_head(key: str, head: str) -> bool:
    return key.startswith(head + ".")


def load_pretrained(model: nn.Module, path: str) -> list[str]:
    """Load a local state dict (.safetensors, or .pt/.pth read with weights_only) into `model`.

    Keys must match the architecture exactly, except the classifier head: when its shape differs (another class
    count) or it is absent, the model keeps its freshly initialised head. Returns the head keys left fresh.
    timm models first pass the weights through their own checkpoint_filter_fn, as timm's pretrained loading does
    (it resamples ViT position embeddings and Swin bias tables to the trial's image size).
    """
    from timm.models import load_state_dict

    file = _resolve(path)
    if not os.path.isfile(file):
        hint = "" if os.path.isabs(os.path.expanduser(path)) else " (a relative path starts where the sweep started)"
        raise UserError(f"pretrained weights file {file} does not exist{hint}")
    try:
        state = load_state_dict(file, device="cpu", weights_only=True)  # also unwraps 'state_dict' / 'model' keys
    except (AttributeError, TypeError):  # timm's loader read something other than a dict
        state = None
    except Exception as exc:  # corrupt file, pickled code refused by weights_only, bad safetensors header
        raise UserError(f"pretrained weights file {file} is unreadable: {_load_failure(file, exc)}") from None
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"pretrained weights file {file} does not hold a state dict (a dict of tensors, optionally "
                        f"under a 'state_dict' or 'model' key)")
    return _load_state(model, state, f"pretrained weights file {file}")


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """load_pretrained's checks and loading, for a state dict read from `source` (named in errors)."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None and type(model).__module__.startswith("timm."):
        try:
            state = filter_fn(state, model)
        except Exception as exc:
            raise UserError(f"{source} does not fit {type(model).__name__}: {error_line(exc)}") from None

    own = model.state_dict()
    head = classifier_name(model)
    unexpected = [k for k in state if k not in own]
    # BatchNorm fills in a missing num_batches_tracked itself (files saved by older PyTorch versions lack it)
    missing = [k for k in own if k not in state and not _in_head(k, head) and not k.endswith(".num_batches_tracked")]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    wrong_shape = [k for k in mismatched if not _in_head(k, head)]
    if unexpected or missing or wrong_shape:
        problems = [f"{len(keys)} {what} key(s) ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                    for what, keys in (("missing", missing), ("unexpected", unexpected),
                                       ("wrong-shape", wrong_shape)) if keys]
        raise UserError(f"{source} does not fit model {type(model).__name__}: {'; '.join(problems)}")
    if mismatched:  # another class count: drop the whole head, the model keeps its fresh one
        state = {k: v for k, v in state.items() if not _in_head(k, head)}
    model.load_state_dict(state, strict=False)
    return sorted(k for k in own if _in_head(k, head) and k not in state)


def load_hub_weights(model: nn.Module, model_name: str) -> None:
    """Load the published weights of `model_name` into `model` through its library's own loader.

    torchvision's ImageNet ResNets take `Weights.DEFAULT` (cached under $TORCH_HOME/hub); timm models take their
    default pretrained tag (cached under $HF_HOME, or $TORCH_HOME for URL-only weights). Both loaders re-initialise
    a classifier of another class count; timm also resamples position embeddings to the trial's image size.
    """
    arch = getattr(_REGISTRY.get(model_name), "torchvision_arch", None)
    timm_cfg = getattr(model, "pretrained_cfg", None) or {}
    timm_published = type(model).__module__.startswith("timm.") and (timm_cfg.get("hf_hub_id") or timm_cfg.get("url"))
    if arch is None and not timm_published:
        hub_models = [n for n in sorted(_REGISTRY) if getattr(_REGISTRY[n], "torchvision_arch", None)
                      or getattr(_REGISTRY[n], "timm_name", None)]
        raise UserError(f"model '{model_name}' has no published weights for pretrained=hub; it works for "
                        f"{', '.join(hub_models)} and timm/<name>, else give a local file: --set pretrained=PATH")
    if arch is not None:
        import torchvision

        weights = torchvision.models.get_model_weights(arch).DEFAULT
        where = weights.url
    else:
        where = f"https://huggingface.co/{timm_cfg['hf_hub_id']}" if timm_cfg.get("hf_hub_id") else timm_cfg["url"]
    try:
        if arch is not None:
            _load_state(model, weights.get_state_dict(progress=False, check_hash=True), f"torchvision's {weights}")
        else:
            from timm.models import load_pretrained as timm_load_pretrained

            filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
            timm_load_pretrained(model, num_classes=model.num_classes, filter_fn=filter_fn)
    except UserError:
        raise
    except Exception as exc:  # offline, a firewall, a truncated cache file
        raise UserError(f"pretrained=hub: cannot fetch the weights of '{model_name}' from {where} "
                        f"({error_line(exc, 120)}); offline, download them on another machine and give "
                        f"--set pretrained=PATH") from None


def freeze_backbone(model: nn.Module) -> None:
    """Train only the classifier head: every other parameter stops taking gradients."""
    head = classifier_name(model)
    for name, param in model.named_parameters():
        param.requires_grad_(_in_head(name, head))


def freeze_backbone_batchnorm(model: nn.Module) -> None:
    """Put the backbone's BatchNorm layers in eval mode, so a frozen backbone keeps its running statistics too.

    Call after model.train().
    """
    head = classifier_name(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not _in_head(name, head):
            module.eval()


def weights_file(path: str, model_name: str) -> str:
    """`pretrained` as a file, or a weights folder holding <model>.safetensors|.pth|.pt (searched spaces mix models)."""
    resolved = _resolve(path)
    if not os.path.isdir(resolved):
        return path
    stem = model_name.removeprefix("timm/").replace("/", "_")
    for ext in (".safetensors", ".pth", ".pt"):
        if os.path.isfile(os.path.join(resolved, stem + ext)):
            return os.path.join(resolved, stem + ext)
    raise UserError(f"weights folder {resolved} has no {stem}.safetensors, {stem}.pth or {stem}.pt for model "
                    f"'{model_name}'")


def _resolve(path: str) -> str:
    """Expand ~; a relative path is taken from where the sweep started (Ray runs trials in their own folders)."""
    path = os.path.expanduser(path)
    return os.path.abspath(os.path.join(os.environ.get("TUNE_ORIG_WORKING_DIR", os.getcwd()), path))


def _load_failure(file: str, error: BaseException) -> str:
    """What went wrong reading a weights file, without timm's advice to unpickle arbitrary code."""
    import pickle

    if isinstance(error.__cause__, pickle.UnpicklingError):
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(file)
        except Exception:  # not a zip-format torch file at all
            unsafe = []
        if unsafe:
            return (f"it holds pickled objects ({', '.join(unsafe[:3])}) that weights-only loading refuses; "
                    f"save model.state_dict() instead")
        return "not a PyTorch (torch.save) or safetensors weights file"
    if isinstance(error, PermissionError):
        return error_line(error)
    return f"not a PyTorch (torch.save) or safetensors weights file, or a truncated one ({error_line(error)})"
