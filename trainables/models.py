"""Model registry: small CIFAR nets of our own, CIFAR-stem ResNets built from timm, and any timm model.

    create_model("resnet50", num_classes=100, width=0.5)
    create_model("timm/convnext_atto", num_classes=10)
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from trainables.errors import UserError

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    def add(factory: ModelFactory) -> ModelFactory:
        _REGISTRY[name] = factory
        return factory

    return add


def list_models() -> list[str]:
    return sorted(_REGISTRY) + ["timm/<name>"]


def create_model(name: str, num_classes: int, *, width: float = 1.0, drop_rate: float = 0.0,
                 drop_path: float = 0.0) -> nn.Module:
    """Build a freshly initialised model by name."""
    if name.startswith("timm/"):
        import timm

        timm_name = name.removeprefix("timm/")
        if not timm.is_model(timm_name):
            raise UserError(f"timm has no model '{timm_name}'; list them with python -c \"import timm; "
                            f"print(timm.list_models('*{timm_name[:4]}*'))\"")
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate,
                                 drop_path_rate=drop_path)
    if name not in _REGISTRY:
        raise UserError(f"unknown model '{name}'; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name](num_classes=num_classes, width=width, drop_rate=drop_rate, drop_path=drop_path)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _scaled(channels: int, width: float) -> int:
    return max(8, int(round(channels * width / 8)) * 8)  # multiples of 8 keep tensor cores busy


@register_model("cnn_basic")
def cnn_basic(num_classes: int, width: float = 1.0, drop_rate: float = 0.0, drop_path: float = 0.0) -> nn.Module:
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
    def build(num_classes: int, width: float = 1.0, drop_rate: float = 0.0, drop_path: float = 0.0) -> nn.Module:
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


register_model("resnet18")(_cifar_resnet("basic", (2, 2, 2, 2)))
register_model("resnet34")(_cifar_resnet("basic", (3, 4, 6, 3)))
register_model("resnet50")(_cifar_resnet("bottleneck", (3, 4, 6, 3)))


def forward_backward_smoke(model: nn.Module, num_classes: int, image_size: int = 32, batch: int = 2) -> None:
    """One tiny training step on CPU: proves a config builds and trains before a sweep starts."""
    x = torch.randn(batch, 3, image_size, image_size)
    loss = nn.functional.cross_entropy(model(x), torch.arange(batch) % num_classes)
    loss.backward()
