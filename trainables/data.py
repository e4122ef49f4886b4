"""Datasets as uint8 NCHW arrays with a fixed train/val/test split.

The driver loads a data set once; trials get the train and val parts through Ray's object
store (zero-copy numpy), so no trial re-reads or re-decodes files. The test part never
reaches a trial: it is kept for the one final evaluation of the winner.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from trainables.errors import UserError

DATASETS = ("digits", "cifar10", "cifar100", "folder")
DEFAULT_DATA_DIR = "data"  # for cifar10/100 when --data-dir is not given: created, and downloaded into
# (classes, stored image size) known without touching the files, for --dry-run; a folder's are read from disk.
KNOWN_SHAPES = {"digits": (10, 32), "cifar10": (10, 32), "cifar100": (100, 32)}
SPLIT_SEED = 0  # fixed: every trial of every sweep sees the same validation images
VAL_FRACTION = 0.1


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

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def without_test(self) -> "ImageSplits":
        """The part trials may see: selection happens on validation only."""
        return replace(self, test_x=None, test_y=None)

    def summary(self) -> str:
        n_test = 0 if self.test_y is None else len(self.test_y)
        return (f"{self.name}: {self.num_classes} classes, {self.image_size}px, "
                f"train {len(self.train_y)} / val {len(self.val_y)} / test {n_test}")


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, image_size: int | None = None,
                 download: bool = True) -> ImageSplits:
    """Load a named data set. `image_size` sets the stored size of image-folder data sets."""
    if name == "digits":
        train_x, train_y, test_x, test_y, classes = _digits()
    elif name in ("cifar10", "cifar100"):
        root = _require_dir(name, data_dir) if data_dir is not None else _default_dir()
        train_x, train_y, test_x, test_y, classes = _cifar(name, root, download)
    elif name == "folder":
        train_x, train_y, test_x, test_y, classes = _image_folder(_require_dir(name, data_dir), image_size or 64)
    else:
        raise UserError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")
    train_x, train_y, val_x, val_y = _carve_validation(train_x, train_y)
    mean, std = _channel_stats(train_x)
    return ImageSplits(name, tuple(classes), train_x, train_y, val_x, val_y, test_x, test_y, mean, std)


def _carve_validation(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    idx_train, idx_val = train_test_split(np.arange(len(y)), test_size=VAL_FRACTION, random_state=SPLIT_SEED,
                                          stratify=y)
    idx_train.sort()
    idx_val.sort()
    return x[idx_train], y[idx_train], x[idx_val], y[idx_val]


def _channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    sample = x[:: max(1, len(x) // 5000)].astype(np.float32) / 255.0  # 5k images pin the stats well
    mean = sample.mean(axis=(0, 2, 3))
    std = sample.std(axis=(0, 2, 3)).clip(min=1e-3)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


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


def _digits() -> tuple:
    """scikit-learn's bundled 8x8 digits (real scans, 1797 images), served as 32x32 RGB."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]  # values 0..16
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous().numpy()
    labels = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=SPLIT_SEED,
                                           stratify=labels)
    idx_train.sort()
    idx_test.sort()
    return (images[idx_train], labels[idx_train], images[idx_test], labels[idx_test],
            [str(d) for d in range(10)])


def _cifar(name: str, root: Path, download: bool) -> tuple:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls, folder = (CIFAR10, "cifar-10-batches-py") if name == "cifar10" else (CIFAR100, "cifar-100-python")
    if (root / folder).is_dir() and not _cifar_intact(cls, root):
        raise UserError(f"{name} files in {root / folder} are incomplete or corrupt (checksum mismatch); delete that "
                        f"folder and put a fresh copy there (from {cls.url})")
    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except RuntimeError:  # not there yet
        if not download:
            raise UserError(f"{name} not found in {root}; put the extracted '{folder}' folder there") from None
        try:
            train = cls(str(root), train=True, download=True)
            test = cls(str(root), train=False, download=True)
        except Exception as exc:  # offline, proxy, disk full: say where the files go
            raise UserError(f"{name} is not in {root} and could not be downloaded ({type(exc).__name__}); "
                            f"put the extracted '{folder}' folder (from {cls.url}) in {root}") from None
    except Exception as exc:  # a truncated or corrupt batch file fails to unpickle
        raise UserError(f"{name} files in {root / folder} are unreadable ({type(exc).__name__}: {exc}); "
                        f"delete that folder and download it again") from None
    to_nchw = lambda d: np.ascontiguousarray(d.data.transpose(0, 3, 1, 2))  # noqa: E731
    return (to_nchw(train), np.asarray(train.targets, dtype=np.int64), to_nchw(test),
            np.asarray(test.targets, dtype=np.int64), list(train.classes))


def _cifar_intact(cls, root: Path) -> bool:
    """torchvision's own md5 check of every batch file, without loading them."""
    probe = cls.__new__(cls)
    probe.root = str(root)
    return probe._check_integrity()


def _image_folder(root: Path, size: int) -> tuple:
    """ImageNet-style folders: train/<class>/*.jpg for training+validation, val/<class>/* as the test split."""
    from torchvision.datasets import ImageFolder

    parts = {}
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise UserError(f"image folder {root} has no '{split}/' subfolder; expected {root}/train/<class>/*.jpg "
                            f"and {root}/val/<class>/*.jpg")
        try:
            parts[split] = ImageFolder(str(root / split))
        except (FileNotFoundError, RuntimeError) as exc:
            raise UserError(f"image folder {root / split}: {exc}") from None
    classes = parts["train"].classes
    if len(classes) < 2:
        raise UserError(f"image folder {root / 'train'} has {len(classes)} class folder(s); a classifier needs "
                        f"at least 2")
    if parts["val"].classes != classes:
        raise UserError(f"class folders of {root / 'val'} differ from those of {root / 'train'}")
    out = []
    for split in ("train", "val"):
        samples = parts[split].samples
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
            images = list(pool.map(lambda s: _decode(s[0], size), samples))
        out += [np.stack(images), np.asarray([label for _, label in samples], dtype=np.int64)]
    return (*out, classes)


def _decode(path: str, size: int) -> np.ndarray:
    """Decode, resize the short side to `size`, centre-crop to size x size, as uint8 CHW."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            scale = size / min(img.size)
            w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
            img = img.resize((w, h), Image.BILINEAR)
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None
