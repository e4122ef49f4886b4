"""Batched augmentation on the training device (after airbench): one gather per batch, no PIL."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class BatchAugment:
    """uint8 (B, 3, H, W) on any device -> normalised float (B, 3, H, W), augmented when training."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], *, crop_padding: int = 4,
                 hflip: bool = True, image_size: int = 0, device: torch.device | str = "cpu") -> None:
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.image_size = image_size  # 0: keep the stored size
        # (x / 255 - mean) / std folded into one multiply-add
        std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -torch.tensor(mean, device=device).view(1, -1, 1, 1) / std_t

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> normalised float, resized to `image_size` (the un-augmented path used for evaluation)."""
        images = images.float() * self.scale + self.shift
        if self.image_size and self.image_size != images.shape[-1]:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                                   antialias=self.image_size < images.shape[-1], align_corners=False)
        return images

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.crop_padding:
            images = random_crop(images, self.crop_padding, generator)
        if self.hflip:
            images = random_hflip(images, generator)
        return self.normalize(images)


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by `padding` and take one random same-size window per image (torchvision's RandomCrop)."""
    b, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b, 1), device=images.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), device=images.device, generator=generator)
    rows = (dy + torch.arange(h, device=images.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx + torch.arange(w, device=images.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)
