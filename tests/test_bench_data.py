"""The image-folder benchmark figures' code paths on tiny settings (well formed, never timed); the figures that
spawn processes (driver_memory, node_memory) run through `python -m benchmarks --tiny` in tests/test_bench.py."""

import math

from benchmarks import common, driver_memory, folder_decode, node_memory
from benchmarks.photos import photo_folder

TINY = common.SETTINGS["tiny"]


def positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_folder_decode_and_data_ready(tmp_path):
    decode = folder_decode.bench_folder_decode(TINY, str(tmp_path))
    assert decode["images"] == len(list((tmp_path / f"photos-{TINY.folder_images}").rglob("*.jpg")))
    assert all(positive(decode[k]) for k in ("ours_images_per_s", "torchvision_images_per_s", "ratio"))
    ready = folder_decode.bench_data_ready(TINY, str(tmp_path))
    assert positive(ready["first_s"]) and positive(ready["second_s"]) and ready["second_s"] < ready["first_s"]


def test_slope_and_proc_readers(tmp_path):
    points = [{"train_bytes": b, "before": 100, "peak": 100 + 3 * b} for b in (10, 20, 40)]
    assert math.isclose(driver_memory.slope(points), 3.0)
    import os

    rollup = node_memory.smaps(os.getpid())
    assert rollup["Pss"] > 0 and rollup["Rss"] >= rollup["Pss"]


def test_previous_loader_is_the_old_memory_behaviour(tmp_path):
    root = photo_folder(tmp_path, 60)
    train_x, val_x = driver_memory.previous_loader(str(root), 32)
    assert train_x.shape[1:] == (3, 32, 32) and len(train_x) + len(val_x) == 54
