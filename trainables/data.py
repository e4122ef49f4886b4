"""Datasets as uint8 NCHW arrays with a fixed train/val/test split.

An image folder is decoded once into a cache on disk (trainables.cache) and memory-mapped: the driver and every
trial on a node share its pages, and ImageSplits pickle as a reference to the files, so what travels through Ray's
object store to a trial is a few hundred bytes. digits and CIFAR are small and load into memory (trials get them
zero-copy from the object store). The test part never reaches a trial: it is kept for the one final evaluation.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from trainables.cache import (CacheEntry, cache_root, find_or_build, is_whole_file, locate,
                              open_arrays, split_indices, stats_from_histogram)
from trainables.errors import UserError
from trainables.named_sets import NPZ_KEYS, TORCHVISION_SETS, digits, npz, torchvision_set

DATASETS = ("digits", *TORCHVISION_SETS, "npz", "folder")
DEFAULT_DATA_DIR = "data"  # for torchvision's sets when --data-dir is not given: created, and downloaded into
# (classes, stored image size) known without touching the files, for --dry-run; an npz's: npz_shape.
KNOWN_SHAPES = {"digits": (10, 32), **{name: (s.num_classes, s.size) for name, s in TORCHVISION_SETS.items()}}


@dataclass(frozen=True)
class ImageSplits:
    """Images as uint8 (N, 3, H, W) arrays, labels as int64 (N,)."""

    name: str
    classes: tuple[str, ...]
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray | None
    test_y: np.ndarray | None
    mean: tuple[float, float, float]  # per-channel, of the training images, in [0, 1]
    std: tuple[float, float, float]
    cache: CacheEntry | None = None  # the decoded cache the arrays are memory-mapped from (None: in memory)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    @property
    def nbytes(self) -> int:
        """Bytes of the images (all three splits)."""
        return sum(int(x.nbytes) for x in (self.train_x, self.val_x, self.test_x) if x is not None)

    def without_test(self) -> "ImageSplits":
        """The part trials may see: selection happens on validation only."""
        return replace(self, test_x=None, test_y=None)

    def summary(self) -> str:
        n_test = 0 if self.test_y is None else len(self.test_y)
        return (f"{self.name}: {self.num_classes} classes, {self.image_size}px, "
                f"train {len(self.train_y)} / val {len(self.val_y)} / test {n_test}")

    def __reduce__(self):
        """Memory-mapped splits pickle as a reference to their files, re-opened (memory-mapped) where unpickled;
        anything else (in-memory data, or slices of the mapped arrays) pickles by value."""
        with_test = self.test_x is not None
        parts = {"train": self.train_x, "val": self.val_x, **({"test": self.test_x} if with_test else {})}
        if self.cache is not None and all(is_whole_file(x, part) for part, x in parts.items()):
            return open_splits, (self.cache, with_test)
        return ImageSplits, tuple(getattr(self, f.name) for f in dataclasses.fields(self))


def open_splits(entry: CacheEntry, with_test: bool = True) -> ImageSplits:
    """The splits of a decoded cache entry, memory-mapped (on a node without it, decoded there once first)."""
    arrays = open_arrays(locate(entry))
    return ImageSplits("folder", tuple(arrays["classes"]), arrays["train_x"], arrays["train_y"], arrays["val_x"],
                       arrays["val_y"], arrays["test_x"] if with_test else None,
                       arrays["test_y"] if with_test else None, tuple(arrays["mean"]), tuple(arrays["std"]),
                       cache=entry)


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, image_size: int | None = None,
                 download: bool = True, cache_dir: str | os.PathLike | None = None) -> ImageSplits:
    """Load a named data set. `image_size` sets the stored size of image-folder data sets, decoded once into
    `cache_dir` (default: trainables.cache.cache_root(), $SWEEPS_DATA_CACHE or ~/.cache/sweeps/data)."""
    if name == "folder":
        root = _require_dir(name, data_dir).resolve()
        return open_splits(find_or_build(root, image_size or 64, cache_root(cache_dir)))
    if name == "digits":
        train_x, train_y, test_x, test_y, classes = digits()
    elif name in TORCHVISION_SETS:
        root = _require_dir(name, data_dir) if data_dir is not None else _default_dir()
        train_x, train_y, test_x, test_y, classes = torchvision_set(name, root, download)
    elif name == "npz":
        if data_dir is None:
            raise UserError("dataset 'npz' needs --data-dir FILE.npz (train_x, train_y, test_x, test_y)")
        train_x, train_y, test_x, test_y, classes = npz(Path(data_dir).expanduser())
    else:
        raise UserError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")
    idx_train, idx_val = split_indices(train_y)
    val_x, val_y = train_x[idx_val], train_y[idx_val]
    train_x, train_y = train_x[idx_train], train_y[idx_train]
    mean, std = channel_stats(train_x)
    return ImageSplits(name, tuple(classes), train_x, train_y, val_x, val_y, test_x, test_y, mean, std)


def channel_stats(x: np.ndarray, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std in [0, 1] of uint8 (N, 3, H, W) images, a chunk at a time (no float copy)."""
    hist = np.zeros((3, 256), dtype=np.int64)
    for start in range(0, len(x), chunk):
        block = np.asarray(x[start:start + chunk])
        for c in range(3):
            hist[c] += np.bincount(block[:, c].reshape(-1), minlength=256)
    mean, std = stats_from_histogram(hist)
    return tuple(mean), tuple(std)


def _require_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    if data_dir is None:
        raise UserError(f"dataset '{name}' needs --data-dir PATH (the folder holding its files)")
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise UserError(f"--data-dir {path} does not exist; create it (to download into) or point --data-dir at "
                        f"the folder holding the {name} files")
    return path


def _default_dir() -> Path:
    path = Path(DEFAULT_DATA_DIR).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the data folder {path} ({exc.strerror}); pass --data-dir PATH") from None
    return path


def npz_shape(data_dir: str | os.PathLike) -> tuple[int, int]:
    """(classes, image size) of an .npz data set, cheaply: train_x's shape from its .npy header (its images are
    not read), the classes from the labels (small) or its `classes` array. UserError when it cannot be read
    (tuner.run's loading would say more: this is for --dry-run)."""
    path = Path(data_dir).expanduser()
    found = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    if len(found) != 1 or not found[0].is_file():
        raise UserError(f"--data-dir {path}: no single .npz file there")
    try:
        with zipfile.ZipFile(found[0]) as archive:
            files = {name.removesuffix(".npy") for name in archive.namelist()}
            keys = {key: next((k for k in NPZ_KEYS[key] if k in files), None) for key in NPZ_KEYS}
            if None in keys.values():
                raise KeyError(", ".join(k for k, v in keys.items() if v is None))
            with archive.open(f"{keys['train_x']}.npy") as header:
                version = np.lib.format.read_magic(header)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape = read(header)[0]

            def array(name: str) -> np.ndarray:
                with archive.open(f"{name}.npy") as f:
                    return np.lib.format.read_array(f, allow_pickle=False)

            labels = max(int(array(keys[p]).max(initial=0)) for p in ("train_y", "test_y")) + 1
            classes = max(labels, len(array("classes"))) if "classes" in files else labels
    except Exception as exc:  # noqa: BLE001 - not a zip, a missing array, a broken header
        raise UserError(f"--data-dir {found[0]} is not a readable .npz ({type(exc).__name__}: {exc})") from None
    # (N, H, W), (N, H, W, C) or (N, C, H, W), as trainables.named_sets.npz reads them
    size = shape[1] if len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3)) else shape[-1]
    return classes, int(size)
