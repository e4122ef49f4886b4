"""Figure 6, `folder_decode_images_per_s`: decoding an image folder into the cache (trainables.cache: worker
processes on every core, straight into a memory-mapped .npy) vs torchvision's ImageFolder + DataLoader with as many
workers, at the same stored size. The ratio compares the decoding itself (our worker pool's time, torchvision's
loop); ours end to end (listing, writing the arrays and flushing them to disk, which torchvision does not do) is
reported beside it. Figure 7, `data_ready_ratio`: the second sweep's data-ready time (the folder
listed, its cache found and memory-mapped) over the first's (listed and decoded)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Settings
from benchmarks.photos import photo_folder


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def torchvision_decode(root: Path, size: int, workers: int, batch: int = 64) -> tuple[int, float]:
    """ImageFolder (PIL decode, Resize(size) short side, CenterCrop, PILToTensor) through a DataLoader: what a
    torchvision user writes to get the same uint8 (3, size, size) images. (images, seconds)."""
    import torch
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    transform = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])
    t0 = time.perf_counter()
    count = 0
    for split in ("train", "val"):
        loader = torch.utils.data.DataLoader(ImageFolder(str(root / split), transform=transform), batch_size=batch,
                                             num_workers=workers)
        for images, _ in loader:
            count += len(images)
    return count, time.perf_counter() - t0


def bench_folder_decode(s: Settings, workdir: str) -> dict[str, Any]:
    """Both decoders on the same generated folder of JPEGs, with the same number of worker processes."""
    from trainables.cache import META_FILE, build

    root = photo_folder(workdir, s.folder_images)
    workers = usable_cpus()
    out = Path(workdir) / "decode-cache"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    theirs, theirs_s = torchvision_decode(root, s.folder_size, workers)
    t0 = time.perf_counter()
    name = build(root, s.folder_size, out, workers=workers)
    ours_s = time.perf_counter() - t0  # listing, decoding, writing, flushing to disk: everything until the rename
    meta = json.loads((out / name / META_FILE).read_text())
    decode_s = meta["pool_s"]  # the worker processes alone: decoding into the memory-mapped rows
    ours = meta["counts"]["total"]
    return {"images": ours, "image_size": s.folder_size, "workers": workers,
            "ours_images_per_s": ours / decode_s, "torchvision_images_per_s": theirs / theirs_s,
            "ratio": (ours / decode_s) / (theirs / theirs_s), "ours_decode_s": decode_s, "torchvision_s": theirs_s,
            "ours_end_to_end_s": ours_s, "ours_end_to_end_images_per_s": ours / ours_s, "ours_flush_s": meta["flush_s"]}


def bench_data_ready(s: Settings, workdir: str) -> dict[str, Any]:
    """load_dataset on a folder with an empty cache (the first sweep) and again (every later sweep, --resume,
    --add-trials): seconds until the splits are ready, including the folder listing both times."""
    from trainables.data import load_dataset

    root = photo_folder(workdir, s.folder_images)
    cache = Path(workdir) / "ready-cache"
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    first = load_dataset("folder", root, image_size=s.folder_size, cache_dir=cache)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    second = load_dataset("folder", root, image_size=s.folder_size, cache_dir=cache)
    second_s = time.perf_counter() - t0
    assert second.cache == first.cache
    return {"images": len(first.train_y) + len(first.val_y) + len(first.test_y), "image_size": s.folder_size,
            "first_s": first_s, "second_s": second_s, "ratio": second_s / first_s,
            "decoded_bytes": first.nbytes}
