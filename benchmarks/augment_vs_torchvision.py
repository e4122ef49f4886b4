"""Figure 2, `augment_vs_torchvision`: images/s of BatchAugment on uint8 tensors vs torchvision transforms on PIL
images through a DataLoader, and where BatchAugment's time goes."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from benchmarks.common import TARGETS, Settings, tiled, torch_threads

TARGET = TARGETS["augment_vs_torchvision"]


class PilDataset:
    """torchvision.datasets style (as CIFAR10): uint8 HWC array, a PIL image per item, then the transform."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def bench_augment_vs_torchvision(data, s: Settings, workers: int = 1) -> dict[str, Any]:
    """Augmented images/s: our BatchAugment vs the usual torchvision pipeline, both crop (pad 4) + flip + normalise.

    ours: a uint8 (N, 3, 32, 32) tensor, a random batch gathered by index and augmented by BatchAugment in
    one call (what each training step of a trial does), in `threads` torch threads.
    torchvision: a torchvision.datasets-style Dataset of PIL images with RandomCrop(32, padding=4),
    RandomHorizontalFlip, ToTensor, Normalize through a DataLoader(shuffle=True, num_workers=`workers`: the
    CPUs a trial holds, persistent workers), the same batch size. Both after one warm-up epoch.
    """
    import torch

    from trainables.augment import BatchAugment

    images = tiled(data, s.aug_images)
    n = len(images.train_y)
    with torch_threads(s.threads):
        x = torch.from_numpy(images.train_x.copy())
        augment = BatchAugment(images.mean, images.std, crop_padding=4, hflip=True)
        generator = torch.Generator().manual_seed(0)

        def ours_epoch() -> float:
            t0 = time.perf_counter()
            order = torch.randperm(n, generator=generator)
            for start in range(0, n - s.aug_batch + 1, s.aug_batch):
                out = augment(x.index_select(0, order[start:start + s.aug_batch]), generator)
            assert out.dtype == torch.float32
            return (n // s.aug_batch) * s.aug_batch / (time.perf_counter() - t0)

        ours = [ours_epoch() for _ in range(s.aug_epochs + 1)][1:]

        breakdown = augment_breakdown(x, augment, s.aug_batch)

    tv = torchvision_rates(images, s, workers)
    ratio = statistics.median(ours) / statistics.median(tv)
    return {
        "images": n, "batch_size": s.aug_batch, "torch_threads": s.threads, "dataloader_workers": workers,
        "ours_images_per_s": statistics.median(ours), "torchvision_images_per_s": statistics.median(tv),
        "ratio": ratio, "target_ratio": float(TARGET.value), "met": TARGET.met(ratio),
        "breakdown_us_per_batch": breakdown,
    }


def torchvision_rates(images, s: Settings, workers: int) -> list[float]:
    """Images/s of each timed epoch of the torchvision pipeline through a DataLoader, after one warm-up epoch."""
    from torch.utils.data import DataLoader
    from torchvision import transforms

    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(images.mean, images.std)])
    dataset = PilDataset(np.ascontiguousarray(images.train_x.transpose(0, 2, 3, 1)), images.train_y, transform)
    loader = DataLoader(dataset, batch_size=s.aug_batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    rates = []
    for epoch in range(s.aug_epochs + 1):
        t0 = time.perf_counter()
        count = sum(len(batch) for batch, _ in loader)
        if epoch > 0:
            rates.append(count / (time.perf_counter() - t0))
    del loader
    return rates


def augment_breakdown(x, augment, batch: int, calls: int = 50) -> dict[str, float]:
    """Microseconds per batch of each step of BatchAugment's path, median of `calls`."""
    import torch

    from trainables.augment import random_crop, random_crop_flip, random_hflip

    generator = torch.Generator().manual_seed(1)
    idx = torch.randperm(len(x), generator=generator)[:batch]
    images = x[idx]
    cropped = random_crop(images, augment.crop_padding, generator)

    def us(fn) -> float:
        fn()
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e6 * statistics.median(times)

    return {
        "batch_gather_advanced_indexing": us(lambda: x[idx]),  # train_x[idx], as train_epochs gathers a batch
        "batch_gather_index_select": us(lambda: x.index_select(0, idx)),
        "random_crop_flip": us(lambda: random_crop_flip(images, augment.crop_padding, True, generator)),
        # the two steps apart, and the 4-D advanced-indexing crop that the flat gather replaced (for comparison)
        "random_crop": us(lambda: random_crop(images, augment.crop_padding, generator)),
        "random_hflip": us(lambda: random_hflip(cropped, generator)),
        "crop_4d_indexing_before": us(lambda: crop_4d_indexing(images, augment.crop_padding, generator)),
        "normalize": us(lambda: augment.normalize(cropped)),
        "batch_augment_call": us(lambda: augment(images, generator)),
    }


def crop_4d_indexing(images, padding: int, generator=None):
    """The random crop as first written (a 4-D advanced-indexing gather): kept to show what the flat gather saves."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator)
    rows = (dy + torch.arange(h))[:, None, :, None]
    cols = (dx + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(b)[:, None, None, None], torch.arange(images.shape[1])[None, :, None, None], rows, cols]
