"""Named search spaces: one module each, listed here."""

from __future__ import annotations

from search_spaces.base import Asha, SearchSpace
from search_spaces.resnet_rsb import SPACE as _resnet_rsb

SPACES: dict[str, SearchSpace] = {space.name: space for space in (_resnet_rsb,)}


def get_space(name: str) -> SearchSpace | None:
    return SPACES.get(name)


__all__ = ["Asha", "SearchSpace", "SPACES", "get_space"]
