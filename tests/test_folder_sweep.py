"""A user's image folder of real JPEGs at photo size through imagenet100_ablation (stored at 224 px), as a user runs
it: the sweep decodes the folder once, the next finds it without decoding (load_dataset, what its prepare_data
runs), a changed folder is decoded again; the driver's peak memory is read from /proc while the sweep runs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import write_photo_folder
from trainables import cache
from trainables.data import load_dataset
from tuner.folder import SweepFolder

pytestmark = pytest.mark.integration

SMALL = ["--space", "imagenet100_ablation", "--set", "model=mobilenetv3", "--set", "image_size=64",
         "--set", "batch_size=32", "--num-samples", "1", "--max-epochs", "1"]


def run_watched(args: list[str], cwd, timeout: float = 600) -> tuple[subprocess.CompletedProcess, int]:
    """`python -m tuner.run ARGS` with its peak resident memory (VmHWM) polled from /proc until it exits."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "160"})
    proc = subprocess.Popen([sys.executable, "-m", "tuner.run", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = [0]

    def poll() -> None:
        while proc.poll() is None:
            try:
                for line in open(f"/proc/{proc.pid}/status"):
                    if line.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(line.split()[1]) * 1024)
            except OSError:
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    out, err = proc.communicate(timeout=timeout)
    watcher.join()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), peak[0]


def test_folder_decoded_once_shared_and_redecoded_when_changed(tmp_path, data_cache):
    photos = write_photo_folder(tmp_path / "photos", classes=3, per_class=60, val_per_class=10)
    common = [*SMALL, "--dataset", "folder", "--data-dir", str(photos), "--storage", str(tmp_path / "s"),
              "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    builds = lambda: len((data_cache / cache.BUILD_LOG).read_text().splitlines())  # noqa: E731
    before = builds() if (data_cache / cache.BUILD_LOG).exists() else 0

    first, peak = run_watched([*common, "--name", "first"], tmp_path)
    out = " ".join(first.stdout.split())
    assert first.returncode == 0, first.stdout + first.stderr
    assert "data: decoded 210 images" in out and "at 224 px" in out and builds() == before + 1
    assert "memory: " in out and "trial(s) fit at once on the largest node" in out
    assert "Traceback" not in first.stdout + first.stderr
    rows = SweepFolder(tmp_path / "s" / "first").read_trials()
    assert [r["status"] for r in rows] == ["finished"]
    print(f"\nfirst sweep: driver peak RSS {peak / 2**20:.0f} MiB; decoded split {162 * 3 * 224 * 224 / 2**20:.0f} MiB")

    # the next run on the same folder (here --add-trials, as --resume or a new sweep would) decodes nothing
    t0 = time.monotonic()
    grown, grown_peak = run_watched([*common, "--name", "first", "--add-trials", "1"], tmp_path)
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert builds() == before + 1 and "data: decoded" not in grown.stdout and "(no decoding)" in grown.stdout
    assert len(SweepFolder(tmp_path / "s" / "first").read_trials()) == 2
    print(f"--add-trials: ran in {time.monotonic() - t0:.1f} s without decoding; driver peak {grown_peak / 2**20:.0f} MiB")
    second = load_dataset("folder", photos, image_size=224)
    assert str(second.train_x.filename).startswith(str(data_cache))  # trials memory-map the cache, not a copy

    (photos / "train" / "class_001" / "img_00007.jpg").unlink()  # the user edits the folder
    changed = load_dataset("folder", photos, image_size=224)
    assert builds() == before + 2 and len(changed.train_y) + len(changed.val_y) == 179
