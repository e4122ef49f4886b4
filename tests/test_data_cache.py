"""The decoded image-folder cache: decoded once, found again, re-decoded when the folder changes, never read half
written, pickled as a reference to its files, rebuilt on a node that lacks it, and light on the driver's memory."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, write_image_folder, write_photo_folder
from trainables import cache
from trainables.data import ImageSplits, load_dataset, open_splits
from trainables.errors import UserError


def builds(root: Path) -> list[str]:
    log = root / cache.BUILD_LOG
    return log.read_text().splitlines() if log.exists() else []


def test_decoded_once_then_found_then_redecoded_when_changed(tmp_path, capfd):
    folder = write_image_folder(tmp_path / "imgs", classes=3, per_class=20, size=24)
    root = tmp_path / "cache"
    first = load_dataset("folder", folder, image_size=16, cache_dir=root)
    assert len(builds(root)) == 1 and "decoded 78 images" in capfd.readouterr().out
    assert isinstance(first.train_x, np.memmap) and first.train_x.shape[1:] == (3, 16, 16)
    second = load_dataset("folder", folder, image_size=16, cache_dir=root)
    assert len(builds(root)) == 1 and "decoded before" in capfd.readouterr().out
    assert second.cache == first.cache and np.array_equal(second.val_x, first.val_x)
    assert second.mean == first.mean and len(second.train_y) + len(second.val_y) == 60

    os.utime(folder / "train" / "class_1" / "3.png", ns=(time.time_ns(), time.time_ns() + 10**9))  # touched
    third = load_dataset("folder", folder, image_size=16, cache_dir=root)
    assert len(builds(root)) == 2 and third.cache.key != first.cache.key
    assert not first.cache.path.exists() and third.cache.path.is_dir()  # the stale entry is gone
    load_dataset("folder", folder, image_size=24, cache_dir=root)  # another stored size is its own entry
    assert len(builds(root)) == 3 and third.cache.path.is_dir()


def test_statistics_and_pixels_match_an_in_memory_decode(tmp_path):
    from trainables.images import decode_square

    folder = write_image_folder(tmp_path / "imgs", classes=2, per_class=10, size=20)
    d = load_dataset("folder", folder, image_size=12, cache_dir=tmp_path / "c")
    files = sorted((folder / "val").rglob("*.png"))
    assert np.array_equal(d.test_x, np.stack([decode_square(f, 12) for f in files]))
    everything = np.concatenate([d.train_x]).astype(np.float64) / 255
    assert np.allclose(d.mean, everything.mean(axis=(0, 2, 3))) and np.allclose(d.std, everything.std(axis=(0, 2, 3)))


def test_splits_pickle_as_a_reference_and_slices_by_value(tmp_path):
    d = load_dataset("folder", write_image_folder(tmp_path / "imgs", per_class=20), image_size=16,
                     cache_dir=tmp_path / "c")
    blob = pickle.dumps(d.without_test())
    assert len(blob) < 2000  # a few hundred bytes: paths and a key, not the images
    back = pickle.loads(blob)
    assert isinstance(back.train_x, np.memmap) and back.test_x is None and np.array_equal(back.train_x, d.train_x)
    import dataclasses

    part = dataclasses.replace(d, train_x=d.train_x[:5], train_y=d.train_y[:5])
    again = pickle.loads(pickle.dumps(part))
    assert len(again.train_x) == 5 and np.array_equal(again.train_x, d.train_x[:5])


def test_a_node_without_the_cache_decodes_it_once(tmp_path, monkeypatch):
    folder = write_image_folder(tmp_path / "imgs", per_class=12)
    driver_root, node_root = tmp_path / "driver", tmp_path / "node"
    d = load_dataset("folder", folder, image_size=16, cache_dir=driver_root)
    blob = pickle.dumps(d.without_test())
    monkeypatch.setenv(cache.CACHE_ENV, str(node_root))  # this "node" has its own, empty cache folder
    (driver_root / d.cache.name).rename(tmp_path / "elsewhere")  # and cannot see the driver's
    on_node = pickle.loads(blob)
    assert Path(on_node.train_x.filename).parent == node_root / d.cache.name and len(builds(node_root)) == 1
    assert np.array_equal(on_node.val_x, np.load(tmp_path / "elsewhere" / "val_x.npy"))
    pickle.loads(blob)
    assert len(builds(node_root)) == 1  # decoded once per node
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "third"))
    (folder / "train" / "class_0" / "0.png").unlink()
    with pytest.raises(UserError, match="changed since the sweep started"):
        pickle.loads(blob)


def test_bad_images_are_one_line_and_leave_no_entry(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", classes=2, per_class=6)
    (folder / "train" / "class_1" / "4.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    root = tmp_path / "c"
    with pytest.raises(UserError, match=r"cannot read image .*class_1/4\.png"):
        load_dataset("folder", folder, cache_dir=root)
    assert [p.name for p in root.iterdir() if p.is_dir()] == []


def test_a_decoder_killed_midway_leaves_nothing_that_is_read(tmp_path):
    folder = write_photo_folder(tmp_path / "photos", classes=2, per_class=150, val_per_class=20)
    root = tmp_path / "c"
    root.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "trainables.cache", "--data-dir", str(folder), "--image-size",
                             "64", "--root", str(root), "--result", str(tmp_path / "r.json"), "--workers", "1"],
                            cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(root.glob(".tmp-*/train_x.npy")) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(root.glob(".tmp-*")) and not [p for p in root.iterdir() if not p.name.startswith(".")
                                              and p.is_dir()]
    d = load_dataset("folder", folder, image_size=64, cache_dir=root)  # decoded whole, the torn one removed
    assert not list(root.glob(".tmp-*")) and len(d.train_y) + len(d.val_y) == 300
    assert json.loads((d.cache.path / cache.META_FILE).read_text())["counts"]["total"] == 340


def test_moved_folder_and_missing_cache_is_one_line(tmp_path, monkeypatch):
    folder = write_image_folder(tmp_path / "imgs", per_class=12)
    d = load_dataset("folder", folder, image_size=16, cache_dir=tmp_path / "c")
    blob = pickle.dumps(d.without_test())
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "empty"))
    (tmp_path / "c").rename(tmp_path / "c-moved")
    folder.rename(tmp_path / "imgs-moved")
    with pytest.raises(UserError, match="is not here to decode it: set SWEEPS_DATA_CACHE"):
        pickle.loads(blob)


@pytest.mark.integration
def test_peak_driver_memory_stays_flat(tmp_path):
    """Peak RSS of a process loading a folder of 600 JPEGs (500x375, stored at 224 px: 81 MB decoded) minus the
    same process's before loading: far below 1.3x the decoded training split (the old loader took ~9x)."""
    folder = write_photo_folder(tmp_path / "photos", classes=4, per_class=135, val_per_class=15)
    code = ("import resource, sys\n"
            "from trainables.data import load_dataset\n"
            "from tuner.packing import process_memory\n"
            "import torch, sklearn.model_selection\n"  # what a driver has loaded before its data
            "before = process_memory()['VmHWM']\n"
            f"d = load_dataset('folder', {str(folder)!r}, image_size=224, cache_dir={str(tmp_path / 'c')!r})\n"
            "print(before, process_memory()['VmHWM'], d.train_x.nbytes)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    before, peak, train_bytes = map(int, proc.stdout.strip().splitlines()[-1].split())
    print(f"\npeak driver RSS {peak / 2**20:.0f} MiB (libraries {before / 2**20:.0f} MiB), decoded training split "
          f"{train_bytes / 2**20:.0f} MiB: growth {(peak - before) / train_bytes:.2f}x of it")
    assert train_bytes == 486 * 3 * 224 * 224
    assert peak - before <= 0.3 * train_bytes


def test_a_full_disk_is_one_line_before_any_image_is_decoded(tmp_path, monkeypatch):
    import errno

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    (tmp_path / "entry").mkdir()
    with pytest.raises(UserError, match=r"not enough disk space for the decoded images .* set SWEEPS_DATA_CACHE"):
        cache.allocate(tmp_path / "entry" / "train_x.npy", (1000, 3, 224, 224))
