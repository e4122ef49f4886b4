"""Figure 5, `gpu_images_per_s` and `packing_speedup`: training images/s per model on one GPU, and the aggregate
images/s of 1/2/4/8 trials packed on that GPU (CUDA only).

The packed trials are spawned processes (`PackedTrials`, also used by `make gpu-check`): they import this module
(and benchmarks.common), never Ray, and train on generated images, so they need nothing beyond torch and timm.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any, Callable

from benchmarks.common import NOT_MEASURED_NO_GPU, Settings, tiled

if TYPE_CHECKING:
    from trainables.config import TrialConfig
    from trainables.data import ImageSplits

PACKING_WINDOW_S = {"cuda": 8.0, "cpu": 1.0}  # the timed window every packed trial of a round trains through


def gpu_config(model: str, s: Settings, epochs: int) -> TrialConfig:
    """The trial config of a GPU measurement: bf16 autocast and channels_last, as a trial holding a GPU trains."""
    from trainables.config import TrialConfig

    return TrialConfig.from_dict({"model": model, "batch_size": s.gpu_batch, "max_epochs": epochs,
                                  "val_every": 10_000, "opt": "adamw", "lr": 1e-3, "amp": True,
                                  "channels_last": True, "crop_padding": 4, "hflip": True})


def gpu_throughput(model: str, data, s: Settings, device) -> float:
    """Median training images/s of train_epochs on `device` (data on the device, bf16 autocast and
    channels_last on CUDA, as a trial holding a GPU trains), after one warm-up epoch."""
    from trainables.classify import train_epochs

    rates = [m["images_per_s"] for m, _ in train_epochs(gpu_config(model, s, s.gpu_epochs), data, device=device)]
    return statistics.median(rates[1:])


def random_splits(n_train: int, n_val: int = 0, image_size: int = 32, classes: int = 10,
                  seed: int = 0) -> ImageSplits:
    """Generated uint8 images (a CIFAR-like shape), for throughput only: no data set, no scikit-learn needed."""
    import numpy as np

    from trainables.data import ImageSplits

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n_train + n_val, 3, image_size, image_size), dtype=np.uint8)
    y = np.arange(n_train + n_val, dtype=np.int64) % classes
    return ImageSplits("generated", tuple(str(c) for c in range(classes)), x[:n_train], y[:n_train], x[n_train:],
                       y[n_train:], None, None, (0.5,) * 3, (0.25,) * 3)


def packed_trial_worker(rank: int, device: str, commands, results) -> None:
    """One packed trial process, kept for every round: ("train", config, images, share) builds a trial, trains
    one warm-up epoch with its GPU share set as Ray would give it, says "ready", waits for ("go", deadline) and
    trains until that wall-clock deadline; reports the median images/s of its epochs that ended by then."""
    import torch

    from trainables import placement
    from trainables.classify import train_epochs
    from trainables.config import TrialConfig

    torch.set_num_threads(1)
    dev = torch.device(device)
    while True:
        command = commands.get()
        if command[0] == "stop":
            return
        _, config, images, share = command
        try:
            if dev.type == "cuda":
                torch.cuda.set_per_process_memory_fraction(min(share, 1.0))  # what 1/k of a GPU leaves a trial
                torch.cuda.reset_peak_memory_stats()
            placement.set_trial_budget(gpu_fraction=share)
            loop = train_epochs(TrialConfig.from_dict(config), random_splits(images, seed=rank), device=dev)
            next(loop)  # warm-up epoch (allocator, lazily loaded kernels)
            results.put(("ready", rank))
            go = commands.get()
            if go[0] == "stop":  # another trial of the round failed: the parent is closing the pool
                return
            rates, epochs = timed_epochs(loop, go[1])
            peak = int(torch.cuda.max_memory_reserved()) if dev.type == "cuda" else 0
            results.put(("rate", rank, {"images_per_s": statistics.median(rates), "epochs_in_window": epochs,
                                        "peak_reserved_bytes": peak}))
            del loop
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001 - one line back to the parent, which fails the round
            results.put(("error", rank, f"{type(exc).__name__}: {exc}".splitlines()[0][:300]))


def timed_epochs(loop, deadline: float) -> tuple[list[float], int]:
    """images/s of each epoch of `loop` that ended by `deadline` (time.time()); at least the first one."""
    rates: list[float] = []
    for metrics, _ in loop:
        if time.time() > deadline:
            return (rates or [metrics["images_per_s"]]), len(rates)
        rates.append(metrics["images_per_s"])
    return rates, len(rates)


class PackedTrials:
    """`most` spawned trial processes kept for a whole packing measurement (each pays its start and CUDA context
    once); each round, k of them train at once through the same timed window, as k trials packed on one GPU."""

    def __init__(self, most: int, device: str, timeout: float = 300.0) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
        self.device, self.timeout = device, timeout
        self.commands = [ctx.Queue() for _ in range(most)]
        self.results = ctx.Queue()
        self.procs = [ctx.Process(target=packed_trial_worker, args=(i, device, q, self.results), daemon=True)
                      for i, q in enumerate(self.commands)]
        for p in self.procs:
            p.start()

    def __enter__(self) -> "PackedTrials":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def round(self, config: dict[str, Any], k: int, images: int, window_s: float) -> list[dict[str, Any]]:
        """k trials of `config` at once (each with 1/k of the GPU), timed together over `window_s` seconds."""
        for q in self.commands[:k]:
            q.put(("train", config, images, 1.0 / k))
        self._wait("ready", k)
        deadline = time.time() + window_s
        for q in self.commands[:k]:
            q.put(("go", deadline))
        return [payload for _, payload in sorted(self._wait("rate", k))]

    def _wait(self, kind: str, k: int) -> list[tuple[int, Any]]:
        import queue

        got: list[tuple[int, Any]] = []
        deadline = time.monotonic() + self.timeout
        while len(got) < k:
            try:
                message = self.results.get(timeout=1.0)
            except queue.Empty:
                dead = [p.exitcode for p in self.procs if p.exitcode is not None]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"packed trial process(es) died (exit codes {dead})" if dead else
                                       f"packed trials gave no '{kind}' within {self.timeout:.0f} s") from None
                continue
            if message[0] == "error":
                raise RuntimeError(f"packed trial {message[1]} failed: {message[2]}")
            got.append((message[1], message[2] if len(message) > 2 else None))
        return got

    def close(self) -> None:
        for q, p in zip(self.commands, self.procs):
            if p.is_alive():
                q.put(("stop",))
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


def packing_speedup(config: dict[str, Any], ks: tuple[int, ...], images: int, device: str,
                    window_s: float | None = None, pool: PackedTrials | None = None,
                    should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Aggregate images/s of k packed trials of `config` for each k in `ks`, and its speedup over k = ks[0].
    `should_stop()` true before a round: that round and the rest are left out (a time guard)."""
    window_s = window_s or PACKING_WINDOW_S["cuda" if device.startswith("cuda") else "cpu"]
    own = pool is None
    pool = pool or PackedTrials(max(ks), device)
    rounds: dict[str, list[dict[str, Any]]] = {}
    try:
        for k in ks:
            if should_stop is not None and should_stop():
                break
            rounds[str(k)] = pool.round(config, k, images, window_s)
    finally:
        if own:
            pool.close()
    aggregate = {k: sum(r["images_per_s"] for r in rows) for k, rows in rounds.items()}
    return {"model": config["model"], "batch_size": config["batch_size"], "window_s": window_s,
            "aggregate_images_per_s": aggregate,
            "speedup": {k: v / aggregate[str(ks[0])] for k, v in aggregate.items()} if aggregate else {},
            "epochs_in_window": {k: [r["epochs_in_window"] for r in rows] for k, rows in rounds.items()},
            "peak_reserved_bytes": {k: max(r["peak_reserved_bytes"] for r in rows) for k, rows in rounds.items()}}


def collect(results, procs, timeout: float = 600.0, join: bool = True) -> list[float]:
    """One result per process; fails at once when one of them dies instead of waiting out the timeout.
    `join=False` leaves the processes running (they may wait to be measured)."""
    import queue

    got: list[float] = []
    deadline = time.monotonic() + timeout
    while len(got) < len(procs):
        try:
            got.append(results.get(timeout=1.0))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"packed trial process(es) failed (exit codes {dead})" if dead else
                                   f"packed trials gave no result within {timeout:.0f} s")
    for p in procs if join else ():
        p.join()
    return got


def bench_gpu(data, s: Settings, device: str | None = None) -> tuple[Any, Any]:
    """Training images/s per model on one GPU, and aggregate images/s of k trials packed on that GPU vs one.

    Each model trains through train_epochs with its data on the GPU, bf16 autocast and channels_last (what a
    trial with a GPU does). Packing runs k processes (k = 1, 2, 4, 8 trials per GPU, as --gpus-per-trial 1/k
    gives, each with that share of the GPU's memory), each training `packing_model` on `gpu_images` generated
    images after a warm-up epoch, timed together over one window; speedup = the sum of their images/s over the
    images/s of one alone. Without CUDA both are the string 'not measured: no GPU' (`device='cpu'` runs the same
    code on the CPU, for tests).
    """
    import torch

    from trainables.models import list_models

    if device is None:
        if not torch.cuda.is_available():
            return NOT_MEASURED_NO_GPU, NOT_MEASURED_NO_GPU
        device = "cuda"
    dev = torch.device(device)
    images = tiled(data, s.gpu_images)
    registered = set(list_models())
    per_model = {}
    for model in s.gpu_models:
        if model in registered:
            per_model[model] = gpu_throughput(model, images, s, dev)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    config = {**gpu_config(s.packing_model, s, 10_000).to_dict(), "val_every": 10_000}
    packing = packing_speedup(config, tuple(s.packing), s.gpu_images, device)
    return {"device": str(dev), "batch_size": s.gpu_batch, "images_per_s": per_model}, packing
