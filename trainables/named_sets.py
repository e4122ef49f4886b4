"""Data sets that load into memory: scikit-learn's digits, torchvision's classification sets by name (CIFAR,
MNIST and its kin, SVHN, STL10) and a NumPy `.npz` of the user's own. Each reader returns the raw train and test
parts, (train_x, train_y, test_x, test_y, classes), with images as uint8 (N, 3, H, W): grayscale is repeated to
3 channels. Validation is carved from training by trainables.data, the same way for every source.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainables.errors import UserError

Parts = tuple  # (train_x, train_y, test_x, test_y, classes)


@dataclass(frozen=True)
class TorchvisionSet:
    """How one torchvision classification set is built and where its files lie under --data-dir."""

    cls: str  # torchvision.datasets class name
    files: str  # what the user puts in --data-dir (for the error lines)
    layout: str  # layout of the class's `.data`: NHWC, NCHW or NHW
    split_arg: bool = False  # split="train"/"test" (SVHN, STL10) instead of train=True/False
    size: int = 32
    num_classes: int = 10


TORCHVISION_SETS = {
    "cifar10": TorchvisionSet("CIFAR10", "the extracted 'cifar-10-batches-py' folder", "NHWC"),
    "cifar100": TorchvisionSet("CIFAR100", "the extracted 'cifar-100-python' folder", "NHWC", num_classes=100),
    "mnist": TorchvisionSet("MNIST", "MNIST/raw/ with the four unpacked idx files", "NHW", size=28),
    "fashionmnist": TorchvisionSet("FashionMNIST", "FashionMNIST/raw/ with the four unpacked idx files", "NHW",
                                   size=28),
    "kmnist": TorchvisionSet("KMNIST", "KMNIST/raw/ with the four unpacked idx files", "NHW", size=28),
    "svhn": TorchvisionSet("SVHN", "train_32x32.mat and test_32x32.mat", "NCHW", split_arg=True),
    "stl10": TorchvisionSet("STL10", "the extracted 'stl10_binary' folder", "NCHW", split_arg=True, size=96),
}
# the keys an .npz may use for each part (ours, and Keras' mnist.npz / cifar10 naming)
NPZ_KEYS = {"train_x": ("train_x", "x_train"), "train_y": ("train_y", "y_train"), "test_x": ("test_x", "x_test"),
            "test_y": ("test_y", "y_test")}


def digits() -> Parts:
    """scikit-learn's bundled 8x8 digits (real scans, 1797 images), served as 32x32 RGB."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from trainables.cache import SPLIT_SEED

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]  # values 0..16
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous().numpy()
    labels = data.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=SPLIT_SEED,
                                           stratify=labels)
    idx_train.sort()
    idx_test.sort()
    return (images[idx_train], labels[idx_train], images[idx_test], labels[idx_test],
            [str(d) for d in range(10)])


def torchvision_set(name: str, root: Path, download: bool) -> Parts:
    """One of TORCHVISION_SETS from `root`, downloaded there first when absent and `download` (and online)."""
    import torchvision.datasets

    spec = TORCHVISION_SETS[name]
    cls = getattr(torchvision.datasets, spec.cls)
    if _present(cls, spec, root) and not _intact(cls, spec, root):
        raise UserError(f"{name} files in {root} are incomplete or corrupt (checksum mismatch); delete them and put "
                        f"a fresh copy of {spec.files} there")
    try:
        train, test = _build(cls, spec, root, download=False)
    except RuntimeError:  # not there yet
        if not download:
            raise UserError(f"{name} not found in {root}; put {spec.files} there") from None
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # torchvision prints every mirror it tries
                train, test = _build(cls, spec, root, download=True)
        except Exception as exc:  # noqa: BLE001 - offline, proxy, disk full: say where the files go
            raise UserError(f"{name} is not in {root} and could not be downloaded ({type(exc).__name__}); "
                            f"put {spec.files} in {root}") from None
    except Exception as exc:  # noqa: BLE001 - a truncated or corrupt file fails to parse
        raise UserError(f"{name} files in {root} are unreadable ({type(exc).__name__}: {exc}); delete them and "
                        f"download them again") from None
    classes = list(getattr(train, "classes", None) or range(spec.num_classes))
    return (to_nchw3(_images(train), spec.layout, name), _labels(train), to_nchw3(_images(test), spec.layout, name),
            _labels(test), [str(c) for c in classes])


def _build(cls, spec: TorchvisionSet, root: Path, download: bool):
    if spec.split_arg:
        return (cls(str(root), split="train", download=download), cls(str(root), split="test", download=download))
    return cls(str(root), train=True, download=download), cls(str(root), train=False, download=download)


def _present(cls, spec: TorchvisionSet, root: Path) -> bool:
    """Whether any of the set's files are in `root` (then a failed integrity check means corrupt, not absent)."""
    if spec.layout == "NHW":  # MNIST and kin: root/<Class>/raw/
        return (root / spec.cls / "raw").is_dir()
    folder = getattr(cls, "base_folder", None)
    if folder:
        return (root / folder).is_dir()
    return any((root / f).exists() for f in ("train_32x32.mat", "test_32x32.mat"))


def _intact(cls, spec: TorchvisionSet, root: Path) -> bool:
    """torchvision's own checksum check, without loading (MNIST's raw files carry no checksum: existence only)."""
    from torchvision.datasets.utils import check_integrity

    if spec.cls == "SVHN":  # one .mat file per split, each with its md5
        return all(check_integrity(str(root / file), md5) for _, file, md5 in
                   (cls.split_list["train"], cls.split_list["test"]) if (root / file).exists())
    probe = cls.__new__(cls)
    probe.root = str(root)
    return probe._check_exists() if spec.layout == "NHW" else probe._check_integrity()


def _images(dataset) -> np.ndarray:
    data = dataset.data
    return data.numpy() if hasattr(data, "numpy") else np.asarray(data)


def _labels(dataset) -> np.ndarray:
    labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = dataset.labels
    return np.asarray(labels.numpy() if hasattr(labels, "numpy") else labels, dtype=np.int64)


def to_nchw3(images: np.ndarray, layout: str, what: str) -> np.ndarray:
    """uint8 images in `layout` (NHWC, NCHW or NHW) as contiguous (N, 3, H, W); one channel is repeated."""
    if layout == "NHW":
        images = images[:, None]
    elif layout == "NHWC":
        images = images.transpose(0, 3, 1, 2)
    if images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    if images.shape[1] != 3:
        raise UserError(f"{what}: images have {images.shape[1]} channels; give 1 (grayscale) or 3 (RGB)")
    return np.ascontiguousarray(images, dtype=np.uint8)


# --- a NumPy .npz of the user's own ---------------------------------------------------------------------------------

def npz(path: Path) -> Parts:
    """train_x/train_y/test_x/test_y (or Keras' x_train/y_train/x_test/y_test) and an optional `classes`:
    uint8 images (N, H, W, C), (N, C, H, W) or (N, H, W), integer labels 0..K-1."""
    if path.is_dir():
        found = sorted(path.glob("*.npz"))
        if len(found) != 1:
            raise UserError(f"--data-dir {path} is a folder with {len(found)} .npz files; give the .npz file itself")
        path = found[0]
    if not path.is_file():
        raise UserError(f"--data-dir {path} does not exist; give the .npz file (train_x, train_y, test_x, test_y)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as exc:  # noqa: BLE001 - not a zip, truncated, object arrays
        raise UserError(f"{path} is not a readable .npz ({type(exc).__name__}: {exc}); write it with "
                        f"numpy.savez(path, train_x=..., train_y=..., test_x=..., test_y=...)") from None
    parts = {part: _npz_array(arrays, part, path) for part in NPZ_KEYS}
    train_x, test_x = (_npz_images(parts[p], p, path) for p in ("train_x", "test_x"))
    if train_x.shape[1:] != test_x.shape[1:]:
        raise UserError(f"{path}: train_x images are {train_x.shape[1:]} and test_x {test_x.shape[1:]} (C, H, W); "
                        f"store both splits at one size")
    train_y, test_y = (_npz_labels(parts[p], p, len(x), path) for p, x in (("train_y", train_x),
                                                                            ("test_y", test_x)))
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    classes = [str(c) for c in arrays["classes"].tolist()] if "classes" in arrays else \
        [str(c) for c in range(num_classes)]
    if len(classes) < num_classes:
        raise UserError(f"{path}: {len(classes)} class names for labels up to {num_classes - 1}; give one name per "
                        f"label")
    return train_x, train_y, test_x, test_y, classes


def _npz_array(arrays: dict, part: str, path: Path) -> np.ndarray:
    for key in NPZ_KEYS[part]:
        if key in arrays:
            return arrays[key]
    raise UserError(f"{path} has no '{part}' array (it has: {', '.join(sorted(arrays)) or 'none'}); it needs "
                    f"train_x, train_y, test_x, test_y (or x_train, y_train, x_test, y_test)")


def _npz_images(x: np.ndarray, part: str, path: Path) -> np.ndarray:
    if x.dtype != np.uint8:
        raise UserError(f"{path}: {part} is {x.dtype}; store uint8 images (0-255), e.g. "
                        f"(x * 255).round().astype(numpy.uint8) for floats in [0, 1]")
    if x.ndim == 3:
        layout = "NHW"
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        layout = "NHWC"
    elif x.ndim == 4 and x.shape[1] in (1, 3):
        layout = "NCHW"
    else:
        raise UserError(f"{path}: {part} has shape {x.shape}; give (N, H, W, C), (N, C, H, W) with C 1 or 3, or "
                        f"(N, H, W)")
    images = to_nchw3(x, layout, f"{path}: {part}")
    if images.shape[-1] != images.shape[-2] or len(images) == 0:
        raise UserError(f"{path}: {part} images are {images.shape[-2]}x{images.shape[-1]} (H x W) in "
                        f"{len(images)} images; store at least one square image (crop or pad to H = W)")
    return images


def _npz_labels(y: np.ndarray, part: str, count: int, path: Path) -> np.ndarray:
    y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1 or len(y) != count:
        raise UserError(f"{path}: {part} has shape {y.shape} for {count} images; give one integer label per image")
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: {part} is {y.dtype}; labels must be integers 0..K-1")
    if y.min() < 0:
        raise UserError(f"{path}: {part} holds the label {int(y.min())}; labels must be integers 0..K-1")
    return y.astype(np.int64)
