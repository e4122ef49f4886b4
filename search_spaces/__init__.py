"""Named search spaces: one module each, listed here."""

from __future__ import annotations

from search_spaces import (cifar100_baselines, cnn_grid, efficiency, imagenet100_ablation, resnet34_transfer,
                           resnet_rsb, vit_finetune, vit_pretrain_finetune, vit_scratch)
from search_spaces.base import Asha, SearchSpace

SPACES: dict[str, SearchSpace] = {module.SPACE.name: module.SPACE for module in (
    resnet_rsb, cifar100_baselines, vit_scratch, vit_finetune, cnn_grid, resnet34_transfer, imagenet100_ablation,
    vit_pretrain_finetune, efficiency)}
SPACES[vit_pretrain_finetune.STAGE2.name] = vit_pretrain_finetune.STAGE2


def get_space(name: str) -> SearchSpace | None:
    return SPACES.get(name)


__all__ = ["Asha", "SearchSpace", "SPACES", "get_space"]
