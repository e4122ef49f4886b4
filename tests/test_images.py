"""Faithful decoding of every format Pillow opens, and a folder walk that skips debris, survives symlink cycles and
refuses to count one file twice. Real files in real on-disk formats, written with Pillow (or by hand where Pillow
cannot write the format: 16-bit RGB PNG and TIFF)."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_image_folder
from trainables.errors import UserError
from trainables.images import BACKGROUND, decode_square, read_rgb, walk_image_folder

RAMP16 = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520


def png16_rgb(array: np.ndarray, path: Path) -> Path:
    """A 16-bit-per-channel RGB PNG, chunk by chunk (Pillow writes no 16-bit RGB)."""
    h, w, _ = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def tiff16_rgb(array: np.ndarray, path: Path) -> Path:
    """A baseline uncompressed little-endian TIFF, 3 x 16 bits per pixel (Pillow writes no 16-bit RGB)."""
    h, w, _ = array.shape
    data = np.ascontiguousarray(array.astype("<u2")).tobytes()
    bits_at = 8 + len(data)
    ifd_at = bits_at + 6
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 3, bits_at), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 8), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHIHH" if kind == 3 and count == 1 else "<HHII", tag, kind, count, value,
                           *((0,) if kind == 3 and count == 1 else ()))
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_at) + data + struct.pack("<3H", 16, 16, 16) + ifd
                     + struct.pack("<I", 0))
    return path


def rgb16() -> np.ndarray:
    return np.stack([RAMP16, RAMP16 // 2, 65535 - RAMP16], axis=-1)


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path, suffix):
    path = tmp_path / f"gray16.{suffix}"
    Image.fromarray(RAMP16).save(path)
    assert Image.open(path).mode.startswith("I;16")
    rgb = read_rgb(path)
    expected = np.round(RAMP16 / 257.0).astype(np.uint8)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 1], expected)
    assert len(np.unique(rgb)) > 200  # clipping would leave 0 .. 255 of the ramp's first 16 values and then 255


@pytest.mark.parametrize("writer", [png16_rgb, tiff16_rgb])
def test_16_bit_rgb_is_scaled(tmp_path, writer):
    array = rgb16()
    rgb = read_rgb(writer(array, tmp_path / ("rgb16.png" if writer is png16_rgb else "rgb16.tif")))
    assert np.abs(rgb.astype(int) - np.round(array / 257.0)).max() <= 1


def test_32_bit_integer_and_float_tiffs_are_scaled(tmp_path):
    Image.fromarray(RAMP16.astype(np.int32), mode="I").save(tmp_path / "int32.tif")
    assert np.abs(read_rgb(tmp_path / "int32.tif")[..., 0].astype(int) - np.round(RAMP16 / 257.0)).max() <= 1
    floats = (RAMP16 / 65535.0).astype(np.float32)
    Image.fromarray(floats, mode="F").save(tmp_path / "float.tif")
    assert np.abs(read_rgb(tmp_path / "float.tif")[..., 0].astype(int) - np.round(floats * 255)).max() <= 1


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red, fully transparent on the left half, half transparent on the right
    rgba[:, 4:, 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rgb = read_rgb(tmp_path / "a.png")
    assert tuple(rgb[0, 0]) == BACKGROUND
    assert abs(int(rgb[0, 7, 0]) - round(200 * 128 / 255 + 255 * 127 / 255)) <= 1 and rgb[0, 7, 1] in (126, 127)
    la = Image.fromarray(np.dstack([np.full((4, 4), 50, np.uint8), np.zeros((4, 4), np.uint8)]), "LA")
    la.save(tmp_path / "la.png")
    assert tuple(read_rgb(tmp_path / "la.png")[0, 0]) == BACKGROUND


def test_palette_with_transparency_gif_first_frame(tmp_path):
    frames = [Image.new("P", (6, 6), i) for i in (1, 2)]
    for frame in frames:
        frame.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], transparency=0)
    assert tuple(read_rgb(tmp_path / "anim.gif")[0, 0]) == (255, 0, 0)  # the first frame's colour
    transparent = Image.new("P", (4, 4), 0)
    transparent.putpalette([10, 20, 30] + [0] * 765)
    transparent.save(tmp_path / "t.png", transparency=0)
    assert tuple(read_rgb(tmp_path / "t.png")[0, 0]) == BACKGROUND


def test_colour_key_transparency_is_composited_on_white(tmp_path):
    """A PNG's tRNS colour key in RGB, L and 16-bit grayscale: keyed pixels are white, not black; the rest kept."""
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[:, 2:] = (200, 10, 10)
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png", transparency=(0, 0, 0))
    assert Image.open(tmp_path / "rgb.png").info["transparency"] == (0, 0, 0)
    assert read_rgb(tmp_path / "rgb.png")[0].tolist() == [list(BACKGROUND)] * 2 + [[200, 10, 10]] * 2
    gray = np.zeros((4, 4), dtype=np.uint8)
    gray[:, 2:] = 77
    Image.fromarray(gray, "L").save(tmp_path / "l.png", transparency=0)
    assert Image.open(tmp_path / "l.png").info["transparency"] == 0
    assert read_rgb(tmp_path / "l.png")[0].tolist() == [list(BACKGROUND)] * 2 + [[77, 77, 77]] * 2
    deep = Image.new("I;16", (4, 4))
    deep.putdata([0, 0, 25700, 25700] * 4)  # 25700 / 65535 x 255 = 100
    deep.save(tmp_path / "i16.png", transparency=0)
    assert Image.open(tmp_path / "i16.png").mode.startswith("I")
    assert read_rgb(tmp_path / "i16.png")[0].tolist() == [list(BACKGROUND)] * 2 + [[100, 100, 100]] * 2


def test_cmyk_bilevel_and_exif_orientation(tmp_path):
    rgb = np.zeros((16, 24, 3), dtype=np.uint8)
    rgb[..., 2] = 255
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = read_rgb(tmp_path / "c.jpg")
    assert out[..., 2].mean() > 240 and out[..., 0].mean() < 15
    Image.new("1", (5, 5), 1).save(tmp_path / "b.png")
    assert tuple(read_rgb(tmp_path / "b.png")[0, 0]) == (255, 255, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif)
    assert read_rgb(tmp_path / "rotated.jpg").shape == (24, 16, 3)


def test_decode_square_resizes_the_short_side_and_crops(tmp_path):
    img = np.zeros((40, 80, 3), dtype=np.uint8)
    img[:, 20:60] = 255  # a white centre band
    Image.fromarray(img).save(tmp_path / "wide.png")
    out = decode_square(tmp_path / "wide.png", 16)
    assert out.shape == (3, 16, 16) and out.dtype == np.uint8 and out.min() > 200  # only the centre is kept


def test_unreadable_and_too_large_images_are_one_line(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"cannot read image .*bad\.png"):
        read_rgb(tmp_path / "bad.png")
    Image.new("L", (9500, 9500)).save(tmp_path / "huge.png")  # 90 Mpx, over Pillow's 89.5 Mpx bomb limit
    with pytest.raises(UserError, match=r"image .*huge\.png is too large to decode safely"):
        read_rgb(tmp_path / "huge.png")


def test_walk_skips_hidden_files_folders_and_debris(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=4)
    cls = root / "train" / "class_0"
    (cls / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (cls / "._0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")  # a resource fork named like an image
    (cls / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8)).save(cls / ".ipynb_checkpoints" / "extra.png")
    (root / "train" / "__MACOSX").mkdir()
    (cls / "notes.txt").write_text("not an image")
    (root / "train" / ".hidden_class").mkdir()
    train, test = walk_image_folder(root)
    assert train.classes == ("class_0", "class_1") and len(train) == 8 and len(test) == 4
    assert not any("/." in p or "__MACOSX" in p or p.endswith(".txt") for p in train.paths)


def test_walk_follows_links_but_not_cycles(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=4)
    elsewhere = write_image_folder(tmp_path / "other", classes=3, per_class=2)
    os.symlink(elsewhere / "train" / "class_2", root / "train" / "class_2")  # a linked class folder is followed
    os.symlink(elsewhere / "val" / "class_2", root / "val" / "class_2")
    os.symlink("..", root / "train" / "class_0" / "loop")  # back up the tree: never followed
    os.symlink(root / "train", root / "train" / "class_1" / "up")
    train, _ = walk_image_folder(root)
    assert train.classes == ("class_0", "class_1", "class_2") and len(train) == 10


@pytest.mark.parametrize("link", [os.symlink, os.link])
def test_the_same_file_twice_is_refused(tmp_path, link):
    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=4)
    link(root / "train" / "class_0" / "0.png", root / "train" / "class_1" / "copy.png")
    with pytest.raises(UserError, match="are the same file"):
        walk_image_folder(root)


def test_a_test_image_linked_into_training_is_refused(tmp_path):
    root = write_image_folder(tmp_path / "imgs", classes=2, per_class=4)
    os.link(root / "val" / "class_0" / "0.png", root / "train" / "class_0" / "leak.png")
    with pytest.raises(UserError, match="are the same file"):
        walk_image_folder(root)


def test_predict_reads_files_with_the_same_conversion(tmp_path):
    """tuner.predict must see a file as the folder's cache does: a 16-bit PNG scaled, an RGBA PNG composited."""
    from tuner.predict import read_image

    Image.fromarray(RAMP16).save(gray := tmp_path / "gray16.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[:4, :, 3] = 200, 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(alpha := tmp_path / "alpha.png")
    for path in (gray, alpha):
        tensor = read_image(path)
        assert tensor.shape[0] == 3
        assert np.array_equal(np.round(tensor.permute(1, 2, 0).numpy() * 255).astype(np.uint8), read_rgb(path))
    assert read_image(alpha)[:, -1, 0].tolist() == [1.0, 1.0, 1.0]  # transparent pixels on the white background
