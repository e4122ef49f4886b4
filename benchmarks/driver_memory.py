"""Figure 8, `driver_rss_per_decoded_byte`: the driver's peak resident memory while it prepares an image folder,
beyond what it held before (the libraries), per byte of decoded training images, at three folder sizes; ours
(trainables.data.load_dataset: decoded by separate processes into a memory-mapped cache) vs the loader it replaced
(threads decoding into a Python list, np.stack, validation carved by fancy indexing, float32 statistics), kept here
as `previous_loader`. The slope of peak memory over decoded size says how memory grows with the folder: flat for
ours. Each measurement is a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Settings
from benchmarks.photos import photo_folder

REPO = Path(__file__).resolve().parent.parent


def previous_loader(root: str, size: int):
    """The image-folder path of trainables/data.py before the decoded cache (its memory behaviour, faithfully)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from sklearn.model_selection import train_test_split
    from torchvision.datasets import ImageFolder

    from trainables.images import decode_square

    out = []
    for split in ("train", "val"):
        samples = ImageFolder(os.path.join(root, split)).samples
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
            images = list(pool.map(lambda s: decode_square(s[0], size), samples))
        out += [np.stack(images), np.asarray([label for _, label in samples], dtype=np.int64)]
        del images
    x, y = out[0], out[1]
    idx_train, idx_val = train_test_split(np.arange(len(y)), test_size=0.1, random_state=0, stratify=y)
    train_x, val_x = x[np.sort(idx_train)], x[np.sort(idx_val)]
    sample = train_x[:: max(1, len(train_x) // 5000)].astype(np.float32) / 255.0
    sample.mean(axis=(0, 2, 3)), sample.std(axis=(0, 2, 3))
    return train_x, val_x


MEASURE = """
import json, sys
import torch, sklearn.model_selection, torchvision  # what a driver holds before it prepares data
from tuner.packing import process_memory
which, root, size, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
before = process_memory()["VmHWM"]
if which == "ours":
    from trainables.data import load_dataset
    train_bytes = load_dataset("folder", root, image_size=size, cache_dir=cache).train_x.nbytes
else:
    from benchmarks.driver_memory import previous_loader
    train_bytes = previous_loader(root, size)[0].nbytes
print(json.dumps({"before": before, "peak": process_memory()["VmHWM"], "train_bytes": int(train_bytes)}))
"""


def measure(which: str, root: Path, size: int, cache: Path) -> dict[str, int]:
    proc = subprocess.run([sys.executable, "-c", MEASURE, which, str(root), str(size), str(cache)], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"driver-memory measurement ({which}) failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def slope(points: list[dict[str, int]]) -> float:
    """Least-squares slope of peak-minus-before over decoded training bytes."""
    x = np.array([p["train_bytes"] for p in points], dtype=float)
    y = np.array([p["peak"] - p["before"] for p in points], dtype=float)
    return float(np.polyfit(x, y, 1)[0])


def bench_driver_memory(s: Settings, workdir: str) -> dict[str, Any]:
    rows: dict[str, list[dict[str, int]]] = {"ours": [], "previous": []}
    for n in s.rss_folder_images:
        root = photo_folder(workdir, n)
        for which in rows:
            point = measure(which, root, s.folder_size, Path(workdir) / f"rss-cache-{n}")
            point["images"] = n
            point["growth_per_decoded_byte"] = (point["peak"] - point["before"]) / point["train_bytes"]
            rows[which].append(point)
    return {"image_size": s.folder_size, "folder_images": list(s.rss_folder_images), "points": rows,
            "ours_slope": slope(rows["ours"]), "previous_slope": slope(rows["previous"]),
            "ours_growth_at_largest": rows["ours"][-1]["growth_per_decoded_byte"],
            "previous_growth_at_largest": rows["previous"][-1]["growth_per_decoded_byte"]}
