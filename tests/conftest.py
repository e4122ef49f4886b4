"""Shared fixtures: a real `mlflow server` on 127.0.0.1, small real data, and a CLI runner."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


class MlflowServer:
    """A real `mlflow server` process bound to loopback, with SQLite runs and served artifacts."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{self.uri}/health", proc=self.proc)
        return self

    def kill(self) -> None:
        """Gone at once, as when its machine dies: no goodbye to its clients."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> MlflowServer:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m tuner.run ARGS` in a real subprocess, as a user runs it."""
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "160", **(env or {})})
    return subprocess.run([sys.executable, "-m", "tuner.run", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def write_image_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 24) -> Path:
    """An ImageNet-style folder of generated PNGs: each class a distinct colour and stripe pattern."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", max(2, per_class // 3))):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
                img[:, :, c % 3] += 120
                img[(c * 3) % size::(c + 2), :, :] = 250
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


def digits_images(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits (real scans) as (N, size, size) uint8 grayscale: train and test parts, with labels."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = F.interpolate(torch.from_numpy(digits.images / 16.0).float()[:, None], size=(size, size),
                           mode="bilinear", align_corners=False)[:, 0]
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    labels = digits.target.astype(np.int64)
    return images[:1400], labels[:1400], images[1400:], labels[1400:]


def write_mnist_folder(root: Path, kind: str = "MNIST") -> Path:
    """torchvision's on-disk MNIST layout (ROOT/<kind>/raw/ with the four unpacked idx files) holding digits."""
    import struct

    train_x, train_y, test_x, test_y = digits_images(28)
    raw = root / kind / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, x, y in (("train", train_x, train_y), ("t10k", test_x, test_y)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, len(x), 28, 28) + x.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, len(y))
                                                          + y.astype(np.uint8).tobytes())
    return root


def write_npz(path: Path, layout: str = "NHWC", size: int = 32, **extra) -> Path:
    """An .npz of the user's own: digits as uint8 RGB in `layout` (NHWC, NCHW or NHW), train and test parts."""
    train_x, train_y, test_x, test_y = digits_images(size)
    shape = {"NHWC": lambda x: np.repeat(x[..., None], 3, -1), "NCHW": lambda x: np.repeat(x[:, None], 3, 1),
             "NHW": lambda x: x}[layout]
    arrays = {"train_x": shape(train_x), "train_y": train_y, "test_x": shape(test_x), "test_y": test_y}
    np.savez(path, **{**arrays, **extra})
    return path


def write_photo_folder(root: Path, classes: int = 3, per_class: int = 40, val_per_class: int = 10,
                       size: tuple[int, int] = (500, 375), quality: int = 90, seed: int = 0) -> Path:
    """An ImageNet-style folder of real JPEG files at photo size (500x375): benchmarks.photos' generator."""
    from benchmarks.photos import write_photo_folder as write

    return write(root, classes, per_class, val_per_class, size, quality, seed)


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory) -> Path:
    """Decoded image folders go to a folder of this test session ($SWEEPS_DATA_CACHE, which every CLI subprocess
    and Ray worker the tests start inherits), never to the user's ~/.cache/sweeps."""
    root = tmp_path_factory.mktemp("data-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SWEEPS_DATA_CACHE", str(root))
        yield root


def user_module(tmp_path: Path, monkeypatch, name: str, source: str) -> str:
    """A module `name` of the user's own, written to tmp_path and importable for this test only; returns its name."""
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def probe_in_fresh_process(config: dict, num_classes: int, stored: int, val_images: int) -> dict:
    """tuner.packing.measure_host_bytes in a process of its own, as a sweep runs it: VmHWM never goes down, so in
    the test process it would be the highest any earlier test reached."""
    import json

    code = ("import json\nfrom tuner.packing import measure_host_bytes\n"
            f"print(json.dumps(measure_host_bytes({config!r}, {num_classes}, {stored}, {val_images})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])
