"""An image folder decoded once, into uint8 arrays on disk that every trial on a node memory-maps.

    entry = find_or_build(Path("ROOT"), 224, cache_root())   # decodes only when ROOT changed (or is new)
    arrays = open_arrays(locate(entry))                        # np.memmap views: train_x, val_x, test_x; labels

Layout: `<root>/<folder name>-<size>px-<source id>-<key>/` holds train_x.npy, val_x.npy, test_x.npy (uint8
(N, 3, S, S)), their labels (*_y.npy) and meta.json (classes, per-channel mean/std, counts). The key hashes the
folder's content as listed (relative paths, sizes, modification times) and the stored size, so a changed folder gets
a new entry and the old one is removed. An entry is decoded into a hidden `.tmp-*` folder by a separate process
(`python -m trainables.cache`: a clean process that may fork its decoding workers), flushed to disk and renamed into
place, so a half-written entry is never read; a lock file keeps two processes from decoding the same folder at once.

Where: `$SWEEPS_DATA_CACHE`, else `$XDG_CACHE_HOME/sweeps/data` (~/.cache/sweeps/data). On a cluster, a trial
reads the entry from its node's own `$SWEEPS_DATA_CACHE` when the node sets one, else from where the driver found
it; when it is not there (a folder on node-local disk), the node decodes the folder once itself (the first trial
there, under the lock; the others wait), so the image folder must then be on that node too.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import mmap
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from trainables.errors import UserError
from trainables.images import BACKGROUND, SplitFiles, decode_square, walk_image_folder

CACHE_ENV = "SWEEPS_DATA_CACHE"
FORMAT = 1  # bump when decoding changes what lands in the arrays: older entries are then decoded again
PARTS = ("train", "val", "test")
META_FILE = "meta.json"
BUILD_LOG = "builds.log"  # one line per decode: which host built which entry, and how fast
SPLIT_SEED = 0  # fixed: every trial of every sweep sees the same validation images
VAL_FRACTION = 0.1
CHUNK = 32  # images per decoding task: fine-grained progress, little inter-process traffic


@dataclass(frozen=True)
class CacheEntry:
    """One decoded folder: where the driver found it, what it is, and what built it (to rebuild on a node)."""

    root: str
    name: str
    key: str
    data_dir: str
    image_size: int

    @property
    def path(self) -> Path:
        return Path(self.root) / self.name


def cache_root(explicit: str | os.PathLike | None = None) -> Path:
    """The cache folder: `explicit`, else $SWEEPS_DATA_CACHE, else $XDG_CACHE_HOME/sweeps/data."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(base) / "sweeps" / "data").resolve()


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, validation) indices: a stratified 10 % carve with a fixed seed."""
    from sklearn.model_selection import train_test_split

    try:
        idx_train, idx_val = train_test_split(np.arange(len(labels)), test_size=VAL_FRACTION,
                                              random_state=SPLIT_SEED, stratify=labels)
    except ValueError as exc:  # a class with one image cannot be stratified
        raise UserError(f"cannot carve a validation split from the training images: {exc}") from None
    return np.sort(idx_train), np.sort(idx_val)


def folder_key(train: SplitFiles, test: SplitFiles, size: int) -> str:
    """What the decoded arrays depend on: every file's relative path, size and mtime, the size, the decoding."""
    digest = hashlib.sha256(f"format {FORMAT} size {size} background {BACKGROUND}\n".encode())
    for split in (train, test):
        digest.update(f"split {split.root.name} classes {split.classes}\n".encode())
        for path, nbytes, mtime in zip(split.paths, split.sizes, split.mtimes):
            digest.update(f"{os.path.relpath(path, split.root)}\0{nbytes}\0{mtime}\n".encode())
    return digest.hexdigest()[:16]


def source_prefix(data_dir: str | os.PathLike, size: int) -> str:
    """The name every entry of one folder at one size starts with (readable, and unique per absolute path)."""
    data_dir = str(Path(data_dir).resolve())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(data_dir).name)[:40] or "root"
    return f"{slug}-{size}px-{hashlib.sha1(data_dir.encode()).hexdigest()[:8]}"


def find_or_build(data_dir: Path, size: int, root: Path, say=print) -> CacheEntry:
    """The entry of `data_dir` at `size` under `root`: found when the folder is unchanged, else decoded now."""
    train, test = walk_image_folder(data_dir)
    key = folder_key(train, test, size)
    entry = CacheEntry(str(root), f"{source_prefix(data_dir, size)}-{key}", key, str(data_dir.resolve()), size)
    if not (entry.path / META_FILE).is_file():
        with source_lock(root, entry, say):
            if not (entry.path / META_FILE).is_file():
                run_builder(entry, root)
                return entry
    say(f"data: {data_dir} at {size} px, decoded before: memory-mapped from {entry.path} (no decoding)")
    return entry


def locate(entry: CacheEntry, say=print) -> Path:
    """Where `entry` is on this node: under the node's own $SWEEPS_DATA_CACHE when it sets one (fast local disk;
    decoded there once when missing), else where the driver had it (a shared folder; decoded there if missing)."""
    root = Path(os.environ[CACHE_ENV]).expanduser() if os.environ.get(CACHE_ENV) else Path(entry.root)
    if (root / entry.name / META_FILE).is_file():
        return root / entry.name
    if not Path(entry.data_dir).is_dir():
        raise UserError(f"the decoded data set {entry.name} is not in {root} on this node ({socket.gethostname()}), "
                        f"and the image folder {entry.data_dir} is not here to decode it: set {CACHE_ENV} to a "
                        f"folder every node shares, or give every node the image folder")
    with source_lock(root, entry, say):
        if not (root / entry.name / META_FILE).is_file():
            run_builder(entry, root)
    return root / entry.name


def open_arrays(path: Path) -> dict:
    """meta.json's fields, each part's images memory-mapped read-only (<part>_x) and its labels (<part>_y)."""
    meta = json.loads((path / META_FILE).read_text())
    for part in PARTS:
        meta[f"{part}_x"] = np.load(path / f"{part}_x.npy", mmap_mode="r")
        meta[f"{part}_y"] = np.load(path / f"{part}_y.npy")
    return meta


def is_whole_file(array, part: str) -> bool:
    """Whether `array` is exactly a part's file as open_arrays maps it (not a slice or a copy of it)."""
    return (isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap)
            and Path(array.filename or "").name == f"{part}_x.npy")


@contextlib.contextmanager
def source_lock(root: Path, entry: CacheEntry, say=print) -> Iterator[None]:
    """One decoder per folder and size at a time, across processes (and nodes, where the file system locks)."""
    import fcntl

    lock_file = root / f"{source_prefix(entry.data_dir, entry.image_size)}.lock"
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(lock_file, "a+")
    except OSError as exc:
        raise UserError(f"cannot write the data cache {root} ({exc.strerror}); set {CACHE_ENV} to a folder you can "
                        f"write to") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"data: another process is decoding {entry.data_dir}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: decode anyway, the rename still keeps entries whole
            pass
        yield


def run_builder(entry: CacheEntry, root: Path) -> None:
    """Decode `entry` into `root` in a fresh `python -m trainables.cache` process (its progress bar on our
    terminal); its UserError comes back as ours."""
    with tempfile.TemporaryDirectory(prefix="sweeps-decode-") as scratch:
        result = Path(scratch) / "result.json"
        env = dict(os.environ)
        package_parent = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        proc = subprocess.run([sys.executable, "-m", "trainables.cache", "--data-dir", entry.data_dir,
                               "--image-size", str(entry.image_size), "--root", str(root), "--key", entry.key,
                               "--result", str(result)], env=env)
        outcome = json.loads(result.read_text()) if result.is_file() else {}
    if "error" in outcome:
        raise UserError(outcome["error"])
    if proc.returncode != 0 or "name" not in outcome:
        raise RuntimeError(f"decoding {entry.data_dir} failed (exit status {proc.returncode}); its output is above")


# --- the decoding process -------------------------------------------------------------------------------------------

def build(data_dir: Path, size: int, root: Path, key: str | None = None, workers: int | None = None) -> str:
    """Decode the folder into a new entry under `root` (the caller holds source_lock); returns its name."""
    t0 = time.perf_counter()
    train, test = walk_image_folder(data_dir)
    found = folder_key(train, test, size)
    if key and found != key:
        raise UserError(f"image folder {data_dir} changed since the sweep started (its listing no longer matches "
                        f"the decoded data the sweep uses); start the sweep again")
    prefix = source_prefix(data_dir, size)
    name = f"{prefix}-{found}"
    for stale in root.glob(f".tmp-{prefix}-*"):  # a decoder killed midway (we hold the lock: none is running)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir(parents=True)
    try:
        meta = _decode_into(tmp, train, test, size, workers)
        meta.update(format=FORMAT, key=found, data_dir=str(data_dir.resolve()), image_size=size,
                    classes=list(train.classes), built_on=socket.gethostname(),
                    decode_s=round(time.perf_counter() - t0, 2))
        t_flush = time.perf_counter()
        _fsync_all(tmp)
        meta["flush_s"] = round(time.perf_counter() - t_flush, 3)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        _fsync_all(tmp)  # meta.json too (the images are on disk already: this is quick)
        try:
            os.rename(tmp, root / name)
        except OSError:  # another decoder (on a file system without locks) got there first: theirs is whole too
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in root.glob(f"{prefix}-*"):  # the same folder before it changed
        if old.name != name and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    with open(root / BUILD_LOG, "a") as log:
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {socket.gethostname()} pid {os.getpid()} {name} "
                  f"{meta['counts']['total']} images {meta['decode_s']} s\n")
    return name


def _decode_into(tmp: Path, train: SplitFiles, test: SplitFiles, size: int, workers: int | None) -> dict:
    """Decode every image straight into its row of a memory-mapped .npy, in forked worker processes."""
    idx_train, idx_val = split_indices(train.labels)
    parts = {"train": (train, idx_train), "val": (train, idx_val), "test": (test, np.arange(len(test)))}
    tasks = []
    for part, (files, idx) in parts.items():
        np.save(tmp / f"{part}_y.npy", files.labels[idx])
        out = tmp / f"{part}_x.npy"
        allocate(out, (len(idx), 3, size, size))
        for start in range(0, len(idx), CHUNK):
            rows = range(start, min(start + CHUNK, len(idx)))
            tasks.append((str(out), list(rows), [files.paths[idx[r]] for r in rows], size, part == "train"))
    workers = workers or _usable_cpus()
    hist = np.zeros((3, 256), dtype=np.int64)
    total = sum(len(t[1]) for t in tasks)
    t0 = time.perf_counter()
    with _pool(workers) as pool:
        futures = [pool.submit(_decode_rows, task) for task in tasks]  # workers fork here, before any thread of ours
        with _progress(f"decoding {train.root.parent} at {size} px", total) as advance:
            for future in as_completed(futures):
                count, part_hist = future.result()  # a worker's UserError, or BrokenProcessPool if one died
                advance(count)
                if part_hist is not None:
                    hist += part_hist
    seconds = time.perf_counter() - t0
    mean, std = stats_from_histogram(hist)
    counts = {"train": len(idx_train), "val": len(idx_val), "test": len(test), "total": total}
    print(f"data: decoded {total:,} images of {train.root.parent} at {size} px (train {counts['train']:,} / val "
          f"{counts['val']:,} / test {counts['test']:,}) in {seconds:.1f} s, {total / max(seconds, 1e-9):.0f} "
          f"images/s with {workers} processes", flush=True)
    return {"mean": mean, "std": std, "counts": counts, "workers": workers, "pool_s": round(seconds, 3),
            "images_per_s": round(total / max(seconds, 1e-9), 1)}


_OUTPUTS: dict[str, np.memmap] = {}  # per worker process: each output file mapped once


def _decode_rows(task) -> tuple[int, np.ndarray | None]:
    out, rows, paths, size, count = task
    array = _OUTPUTS.get(out)
    if array is None:
        array = _OUTPUTS[out] = np.load(out, mmap_mode="r+")
    hist = np.zeros((3, 256), dtype=np.int64) if count else None
    for row, path in zip(rows, paths):
        image = decode_square(path, size)
        array[row] = image
        if hist is not None:
            for c in range(3):
                hist[c] += np.bincount(image[c].reshape(-1), minlength=256)
    return len(rows), hist


def stats_from_histogram(hist: np.ndarray) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and std in [0, 1] from (3, 256) value counts (std floored at 1e-3)."""
    values = np.arange(256, dtype=np.float64) / 255.0
    n = np.maximum(hist.sum(axis=1, keepdims=True), 1)
    p = hist / n
    mean = (p * values).sum(axis=1)
    var = np.maximum((p * values ** 2).sum(axis=1) - mean ** 2, 0.0)
    return [float(m) for m in mean], [float(s) for s in np.sqrt(var).clip(min=1e-3)]


def _pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes; one that dies (killed, out of memory) fails the decode instead of hanging it."""
    import multiprocessing

    # this process is a fresh one with no threads yet, so forking is safe (and fast) where it exists
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))


def allocate(path: Path, shape: tuple[int, ...]) -> None:
    """An .npy of `shape` with its blocks reserved on disk: a full disk is one error now, not a worker killed by
    SIGBUS when it writes into a sparse file's hole."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    nbytes = array.offset + array.nbytes
    del array
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"not enough disk space for the decoded images ({nbytes / 2**30:.1f} GiB for {path.name}) "
                            f"in {path.parent.parent}; free some, or set {CACHE_ENV} to a folder with room") from None
        # a file system without fallocate: the file stays sparse
    finally:
        os.close(fd)


@contextlib.contextmanager
def _progress(what: str, total: int):
    """A progress bar with images/s and the time left, on a terminal (nothing elsewhere)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(highlight=False)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]} images/s"), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(what, total=total, rate="-")
        t0 = time.perf_counter()

        def advance(count: int) -> None:
            done = progress.tasks[0].completed + count
            progress.update(task, advance=count, rate=f"{done / max(time.perf_counter() - t0, 1e-9):.0f}")

        yield advance


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _fsync_all(folder: Path) -> None:
    """Data on disk before the rename makes the entry visible (the workers wrote through the page cache)."""
    for file in folder.iterdir():
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainables.cache", description="decode an image folder into the "
                                "data cache (run by trainables.cache.run_builder)")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--image-size", type=int, required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--key")
    p.add_argument("--result", required=True)
    p.add_argument("--workers", type=int)
    args = p.parse_args(argv)
    try:
        name = build(Path(args.data_dir), args.image_size, Path(args.root), args.key, args.workers)
    except UserError as exc:
        Path(args.result).write_text(json.dumps({"error": str(exc)}))
        return 2
    Path(args.result).write_text(json.dumps({"name": name}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
