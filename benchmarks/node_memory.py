"""Figure 9, `node_memory`: the memory a node holds with 1, 2 and 4 concurrent trials on the same decoded folder:
the sum of the trial processes' proportional set sizes (PSS: a page shared by k processes counts 1/k to each, so
the sum counts the data once however many trials map it), ours (each trial memory-maps the cache, as a trial
unpickling its ImageSplits does) vs each trial holding its own copy of the training images (what a per-trial
pinned or private copy costs). Each trial is a spawned process that trains one epoch over every image
(train_epochs, cnn_basic), then waits for the others while it is measured."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from benchmarks.common import Settings
from benchmarks.gpu import collect
from benchmarks.photos import photo_folder


def smaps(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup in bytes: Pss, Rss, Private_*, Shared_*."""
    out = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def trial_worker(blob: bytes, own_copy: bool, trained, release, results) -> None:
    """One trial: unpickle the data (memory-mapped), optionally copy the images, train an epoch, hold still."""
    import dataclasses

    import numpy as np
    import torch

    from trainables.classify import train_epochs
    from trainables.config import TrialConfig

    torch.set_num_threads(1)
    data = pickle.loads(blob)
    if own_copy:
        data = dataclasses.replace(data, train_x=np.array(data.train_x), val_x=np.array(data.val_x))
    cfg = TrialConfig.from_dict({"model": "cnn_basic", "width": 0.25, "batch_size": min(64, len(data.train_y)),
                                 "max_epochs": 1, "image_size": 32, "crop_padding": 0})
    for _ in train_epochs(cfg, data, device=torch.device("cpu")):
        pass
    results.put(0.0)
    trained.wait()  # everyone has touched every image: measured now
    release.wait()


def measure(blob: bytes, k: int, own_copy: bool) -> dict[str, float]:
    """k trial processes at once; their summed PSS, RSS and private bytes once all have trained their epoch."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    trained, release, results = ctx.Barrier(k + 1), ctx.Barrier(k + 1), ctx.Queue()
    procs = [ctx.Process(target=trial_worker, args=(blob, own_copy, trained, release, results)) for _ in range(k)]
    for p in procs:
        p.start()
    collect(results, procs, timeout=1800, join=False)
    trained.wait()
    rollups = [smaps(p.pid) for p in procs]
    release.wait()
    for p in procs:
        p.join()
    return {"pss_bytes": sum(r["Pss"] for r in rollups), "rss_bytes": sum(r["Rss"] for r in rollups),
            "private_bytes": sum(r.get("Private_Clean", 0) + r.get("Private_Dirty", 0) for r in rollups)}


def bench_node_memory(s: Settings, workdir: str) -> dict[str, Any]:
    from trainables.data import load_dataset

    data = load_dataset("folder", photo_folder(workdir, s.folder_images), image_size=s.folder_size,
                        cache_dir=Path(workdir) / "node-cache")
    blob = pickle.dumps(data.without_test())  # what Ray hands each trial
    ours = {str(k): measure(blob, k, own_copy=False) for k in s.node_trials}
    copies = {str(k): measure(blob, k, own_copy=True) for k in s.node_trials}
    ks = [str(k) for k in s.node_trials]
    per_trial = lambda rows: (rows[ks[-1]]["pss_bytes"] - rows[ks[0]]["pss_bytes"]) / (int(ks[-1]) - int(ks[0]))  # noqa: E731
    return {"trials": list(s.node_trials), "image_size": s.folder_size,
            "decoded_train_val_bytes": int(data.train_x.nbytes + data.val_x.nbytes), "pickled_bytes": len(blob),
            "ours": ours, "own_copies": copies, "ours_bytes_per_extra_trial": per_trial(ours),
            "own_copies_bytes_per_extra_trial": per_trial(copies)}
