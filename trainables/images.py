"""Image files as faithful 8-bit RGB, and ImageNet-style folders walked safely.

    rgb = read_rgb("photo.tif")                  # (H, W, 3) uint8, for tuner.predict and the decoded cache alike
    chw = decode_square("photo.jpg", 224)         # short side resized to 224, centre-cropped, (3, 224, 224)
    train, test = walk_image_folder(Path("ROOT"))  # ROOT/train/<class>/..., ROOT/val/<class>/...

Conversion (`to_rgb`), so that nothing is lost silently:
- 16-bit grayscale (PNG, TIFF: Pillow's I;16 modes) is scaled to 8 bits (65535 -> 255), never clipped; 32-bit
  integer images from the smallest of 8, 16 or 32 bits that holds their values; float images in [0, 1] are scaled
  by 255, other float ranges stretched from min to max; 16-bit RGB(A) PNG and TIFF are read by Pillow at 8 bits
  (the high byte: scaled too);
- alpha (RGBA, LA, PA, premultiplied modes) and colour-key transparency (a PNG's tRNS in P, L, RGB and 16-bit
  grayscale) are composited on BACKGROUND (white);
- palette, bilevel, grayscale, CMYK (through its embedded ICC profile when there is one) and YCbCr become RGB;
- the EXIF orientation is applied; of a multi-frame file (GIF, TIFF pages) the first frame is read.
An image above Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS, 89.5 Mpx) is refused with one UserError
naming it: it is not decoded in reduced form.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainables.errors import UserError

BACKGROUND = (255, 255, 255)  # what transparent pixels are composited on
SPLITS = ("train", "val")  # ROOT/train: training (+ validation, carved); ROOT/val: the test split
IGNORED_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}  # archive and OS debris; hidden names are skipped too


def to_rgb(image, background: tuple[int, int, int] = BACKGROUND):
    """A PIL image of any mode as an 8-bit RGB PIL image, without silent loss (see the module's docstring)."""
    from PIL import Image

    mode = image.mode
    keyed = "transparency" in image.info  # a PNG/GIF colour key (tRNS): pixels of that value are transparent
    if mode.startswith("I") or mode == "F":
        gray = Image.fromarray(_gray_to_uint8(image))
        if keyed and mode != "F":  # a 16-bit key: compare before scaling to 8 bits
            alpha = np.where(np.asarray(image) == image.info["transparency"], 0, 255).astype(np.uint8)
            gray = Image.merge("LA", (gray, Image.fromarray(alpha))).convert("RGBA")
            return to_rgb(gray, background)
        return gray.convert("RGB")
    if mode in ("RGBa", "La"):  # premultiplied alpha: undo it before compositing
        image, mode = image.convert(mode[0:-1] + "A"), mode[0:-1] + "A"
    if mode == "P":
        image = image.convert("RGBA" if keyed else "RGB")
    elif mode in ("LA", "PA") or (keyed and mode in ("1", "L", "RGB")):  # Pillow turns a key into alpha
        image = image.convert("RGBA")
    elif mode == "CMYK":
        image = _cmyk_to_rgb(image)
    if image.mode == "RGBA":
        canvas = Image.new("RGB", image.size, background)
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as exc:  # e.g. LAB without a profile
        raise UserError(f"images of mode {mode} cannot be converted to RGB ({exc})") from None


def _gray_to_uint8(image) -> np.ndarray:
    """Pillow's 16/32-bit integer and float grayscale modes, scaled (Pillow's own convert("L") clips at 255)."""
    values = np.asarray(image)
    if image.mode == "F":
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        if low >= 0.0 and high <= 1.0:
            return np.round(np.nan_to_num(values) * 255.0).astype(np.uint8)
        span = high - low or 1.0
        return np.round((np.nan_to_num(values, nan=low) - low) * (255.0 / span)).astype(np.uint8)
    if image.mode == "I":  # 32-bit integers: the smallest of 8, 16 and 32 bits that holds the values
        top = int(values.max(initial=0))
        bits = 8 if top <= 255 else 16 if top <= 65535 else 32
    else:  # I;16, I;16B, I;16L, I;16N
        bits = 16
    full = float(2 ** bits - 1)
    return np.round(np.clip(values, 0, full) * (255.0 / full)).astype(np.uint8)


def _cmyk_to_rgb(image):
    """CMYK through its embedded ICC profile to sRGB when it has one (print profiles differ a lot), else Pillow's."""
    profile = image.info.get("icc_profile")
    if profile:
        try:
            from PIL import ImageCms

            return ImageCms.profileToProfile(image, ImageCms.ImageCmsProfile(io.BytesIO(profile)),
                                             ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken profile or no littlecms: the plain conversion below
            pass
    return image.convert("RGB")


def open_image(path: str | os.PathLike, draft_size: int = 0):
    """Open, orient and convert one file to RGB; `draft_size` lets JPEGs decode at a reduced scale (DCT scaling)
    while both sides stay >= draft_size. Every failure is one UserError naming the file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if draft_size and image.format == "JPEG":
                    image.draft("RGB", (draft_size, draft_size))
                if image.getexif().get(0x0112, 1) != 1:  # EXIF orientation: only then a transposed copy
                    image = ImageOps.exif_transpose(image)
                rgb = to_rgb(image)
                rgb.load()  # before the file closes
                return rgb
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(f"image {path} is too large to decode safely ({exc}); shrink or remove it") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UserError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB: the conversion the decoded cache uses, for predicting on files."""
    return np.asarray(open_image(path), dtype=np.uint8)


def decode_square(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode, resize the short side to `size` (Pillow's antialiased bilinear), centre-crop: (3, size, size)."""
    from PIL import Image

    img = open_image(path, draft_size=size)
    scale = size / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((w, h), Image.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


# --- walking a folder ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SplitFiles:
    """One split of an image folder: every image file (absolute path) with its class index, in a fixed order."""

    root: Path
    classes: tuple[str, ...]
    paths: tuple[str, ...]
    labels: np.ndarray  # int64, one per path
    sizes: tuple[int, ...]  # bytes, and modification times (ns): what says the folder changed
    mtimes: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)


def image_extensions() -> frozenset[str]:
    """The file name endings of every format this Pillow can open."""
    from PIL import Image

    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def is_hidden(name: str) -> bool:
    """.DS_Store, ._resource forks, .ipynb_checkpoints/, .git/ ... and archive debris (__MACOSX/)."""
    return name.startswith(".") or name in IGNORED_NAMES


def walk_image_folder(root: Path) -> tuple[SplitFiles, SplitFiles]:
    """ROOT/train/<class>/** (training, validation carved from it) and ROOT/val/<class>/** (the test split).

    Hidden files and folders are skipped, a symlinked folder that leads back into its own ancestry is not followed,
    and a file reached twice (two links to one file, within or across the splits) is refused: it would be counted
    twice, or leak test images into training."""
    for split in SPLITS:
        if not (root / split).is_dir():
            raise UserError(f"image folder {root} has no '{split}/' subfolder; expected {root}/train/<class>/*.jpg "
                            f"and {root}/val/<class>/*.jpg")
    seen: dict[tuple[int, int], str] = {}
    train = _walk_split(root / "train", None, seen)
    if len(train.classes) < 2:
        raise UserError(f"image folder {root / 'train'} has {len(train.classes)} class folder(s); a classifier "
                        f"needs at least 2")
    return train, _walk_split(root / "val", train.classes, seen)


def _walk_split(split_dir: Path, classes: tuple[str, ...] | None, seen: dict) -> SplitFiles:
    found = tuple(sorted(e.name for e in os.scandir(split_dir) if not is_hidden(e.name) and e.is_dir()))
    if classes is not None and found != classes:
        raise UserError(f"class folders of {split_dir} differ from those of {split_dir.parent / 'train'}")
    extensions = image_extensions()
    paths, labels, sizes, mtimes = [], [], [], []
    for label, name in enumerate(found):
        before = len(paths)
        for path, info in _images_under(split_dir / name, extensions, above=(split_dir, split_dir.parent)):
            key = (info.st_dev, info.st_ino)
            if key in seen:
                raise UserError(f"image folder {split_dir.parent}: {seen[key]} and {path} are the same file (a "
                                f"link); it would be counted twice: remove one of them")
            seen[key] = path
            paths.append(path)
            labels.append(label)
            sizes.append(info.st_size)
            mtimes.append(info.st_mtime_ns)
        if len(paths) == before:
            raise UserError(f"image folder {split_dir}: class folder '{name}' holds no image files")
    return SplitFiles(split_dir, found, tuple(paths), np.asarray(labels, dtype=np.int64), tuple(sizes),
                      tuple(mtimes))


def _images_under(folder: Path, extensions: frozenset[str], above: tuple[Path, ...] = ()):
    """(path, stat) of every image file below `folder`, in sorted order, following symlinks except back into the
    folders they are in (or the folders `above` it): such a cycle would never end."""
    ancestors: set[tuple[int, int]] = {(s.st_dev, s.st_ino) for s in map(os.stat, above)}

    def visit(directory: str):
        info = os.stat(directory)
        key = (info.st_dev, info.st_ino)
        if key in ancestors:  # a link back up the tree: following it would never end
            return
        ancestors.add(key)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise UserError(f"cannot list {directory}: {exc.strerror}") from None
        for entry in entries:
            if is_hidden(entry.name):
                continue
            try:
                target = os.stat(entry.path)  # follows symlinks
            except OSError:  # a dangling link
                continue
            if stat.S_ISDIR(target.st_mode):
                yield from visit(entry.path)
            elif stat.S_ISREG(target.st_mode) and os.path.splitext(entry.name)[1].lower() in extensions:
                yield entry.path, target
        ancestors.discard(key)

    yield from visit(str(folder))
