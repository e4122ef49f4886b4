"""Generated photo folders for the data figures: real JPEG files at ImageNet's typical 500x375, in ImageNet's
layout (ROOT/train/<class>/*.jpg, ROOT/val/<class>/*.jpg). No data set can be downloaded here."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_photo_folder(root: Path, classes: int = 3, per_class: int = 40, val_per_class: int = 10,
                       size: tuple[int, int] = (500, 375), quality: int = 90, seed: int = 0) -> Path:
    """Smooth colour fields, shapes and sensor-like noise, each class its own hue and shape (learnable classes);
    JPEG quality 90, about 60 kB a file, like a typical ImageNet photo."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"class_{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            hue = np.array([(c * 97) % 256, (c * 53 + 80) % 256, (c * 151 + 160) % 256], dtype=np.float32)
            for i in range(count):
                angle = rng.uniform(0, np.pi)
                ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / max(w, h)
                base = hue[None, None, :] * (0.6 + 0.4 * ramp[..., None]) + rng.normal(0, 12, (h, w, 3))
                img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
                draw = ImageDraw.Draw(img)
                for _ in range(3):
                    x0, y0 = rng.integers(0, w - 60), rng.integers(0, h - 60)
                    box = (x0, y0, x0 + rng.integers(30, 120), y0 + rng.integers(30, 120))
                    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
                    (draw.ellipse if c % 2 else draw.rectangle)(box, fill=fill)
                img.save(folder / f"img_{i:05d}.jpg", quality=quality)
    return root


def photo_folder(workdir: str | Path, images: int, classes: int = 10) -> Path:
    """A folder of about `images` photos (90 % train, 10 % val) under `workdir`, written once per size."""
    root = Path(workdir) / f"photos-{images}"
    classes = max(2, min(classes, images // 30))  # a stratified 10 % validation carve needs >= 1 image per class
    if not (root / "val").is_dir():
        per_class = max(2, round(images * 0.9 / classes))
        write_photo_folder(root, classes=classes, per_class=per_class, val_per_class=max(2, per_class // 9))
    return root
