"""What one trial needs, measured before any trial starts, told to Ray, and held to while it runs.

- `--gpus-per-trial auto`: one training step's peak GPU memory per distinct memory footprint (a one-GPU Ray task
  each), then as many trials per GPU as fit.
- `--memory-per-trial auto` (the default): one training step and one validation batch per footprint in a fresh
  Ray worker (`measure_host_bytes`): its peak private memory (VmHWM less file-backed and shared pages: libraries'
  code and memory-mapped data are shared by every trial on a node), x HOST_SAFETY + HOST_EXTRA, asked of Ray as
  each trial's `memory`, so a node never runs more trials at once than it holds. Measurements are kept in the data
  cache folder (memory-probes.json), so a later sweep of the same footprints on the same kind of node skips them.
- While a trial runs (`train_classifier`, the trainable Ray runs), a CPU trial's private memory is capped a little
  above what it asked for (RLIMIT_DATA), so a trial that outgrows its request fails alone, as `oom`, with a one-line
  reason (TrialOutOfMemory), instead of the kernel or Ray's memory monitor killing whatever process is largest.

Both measurements run the very loop trials run (trainables.classify.train_epochs), so compile, AMP, channels_last,
Mixup and augmentation are all counted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from trainables.config import TrialConfig
from trainables.errors import UserError
from tuner.footprints import (MAX_MEASURED, MEMORY_KEYS, check_batch_sizes, domain_ends,  # noqa: F401 - their
                               memory_configs)  # old home: tuner.dryrun, tuner.costs, sweeps import them from here

if TYPE_CHECKING:  # tuner.spec imports Ray: kept out so that gpucheck imports this module on a box without Ray
    from rich.console import Console

    from tuner.spec import SweepSpec

SAFETY = 1.25  # allocator fragmentation and step-to-step variation over the measured peak
CUDA_CONTEXT_BYTES = 600 * 2 ** 20  # every trial process holds its own CUDA context (~0.5 GiB on H100s)
MAX_TRIALS_PER_GPU = 8
HOST_SAFETY = 1.1  # step-to-step variation over one measured step (CPU tensors are freed to the OS: no cache)
HOST_EXTRA = 256 * 2 ** 20  # checkpoint serialisation and Tune's per-trial objects, not in the probe's step
GUARD_HEADROOM = 1.25  # a CPU trial fails as oom once its private memory passes its request by this factor
EVAL_BATCH = 512  # trainables.classify.EVAL_BATCH: the probe validates on one full evaluation batch
PROBES_FILE = "memory-probes.json"
GIB = 2 ** 30


def trial_bytes(peak_reserved: int) -> int:
    """What one trial needs on a GPU, from its step's peak reserved memory."""
    return int(peak_reserved * SAFETY) + CUDA_CONTEXT_BYTES


def choose_packing(need_bytes: int, gpu_bytes: int, most: int = MAX_TRIALS_PER_GPU) -> int:
    """How many trials of `need_bytes` share one GPU of `gpu_bytes` (0: not even one fits)."""
    return max(0, min(most, gpu_bytes // max(need_bytes, 1)))


def probe_splits(cfg: TrialConfig, num_classes: int, image_size: int, val_images: int):
    """Random images for one training step (one batch) and `val_images` of validation, at `image_size`: the data's
    stored size, which the probe's step resizes to the config's image_size on its device as a trial's does (its
    batches, and the validation batch as float, are held at the stored size first)."""
    import numpy as np

    from trainables.data import ImageSplits

    rng = np.random.default_rng(0)
    n = cfg.batch_size
    images = rng.integers(0, 256, (n + val_images, 3, image_size, image_size), dtype=np.uint8)
    labels = np.arange(n + val_images, dtype=np.int64) % num_classes
    return ImageSplits("probe", tuple(str(c) for c in range(num_classes)), images[:n], labels[:n], images[n:],
                       labels[n:], None, None, (0.5,) * 3, (0.25,) * 3)


def measure_peak_bytes(config: dict[str, Any], num_classes: int, image_size: int) -> int:
    """Peak reserved CUDA memory of one training step (and one validation batch) of `config`, on this GPU, on
    data stored at `image_size` (resized to the config's image_size in the step, as in a trial)."""
    import torch

    from trainables.classify import train_epochs

    cfg = TrialConfig.from_dict({**config, "max_epochs": 1, "pretrained": ""})  # weights do not change memory
    splits = probe_splits(cfg, num_classes, image_size, 2)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    for _ in train_epochs(cfg, splits, device=torch.device("cuda")):
        pass
    return int(torch.cuda.max_memory_reserved())


def _gpu_total_bytes() -> int:
    import torch

    return int(torch.cuda.get_device_properties(0).total_memory)


def resolve_gpus_per_trial(spec: SweepSpec, num_classes: int, image_size: int, console: Console) -> float:
    """The GPU fraction per trial for `auto`: 0 on a cluster without GPUs, else 1/k with k the most trials of the
    largest measured config that fit one of its GPUs. A config that fits no GPU is a UserError now."""
    import ray

    if not any(n["Resources"].get("GPU", 0) for n in ray.nodes() if n.get("Alive")):
        console.print("--gpus-per-trial auto: the Ray cluster has no GPU, so trials train on CPU")
        return 0.0
    measure = ray.remote(num_gpus=1)(measure_peak_bytes)
    configs = memory_configs(spec)
    peaks = ray.get([measure.remote(c, num_classes, image_size) for c in configs])  # data at the stored size
    gpu_bytes = ray.get(ray.remote(num_gpus=1)(_gpu_total_bytes).remote())
    worst, peak = max(zip(configs, peaks), key=lambda pair: pair[1])
    need = trial_bytes(peak)
    per_gpu = choose_packing(need, gpu_bytes)
    if per_gpu == 0:
        raise UserError(f"--gpus-per-trial auto: model {worst['model']} at batch {worst['batch_size']} needs about "
                        f"{need / 2 ** 30:.1f} GiB per trial, more than the GPU's {gpu_bytes / 2 ** 30:.0f} GiB; "
                        f"lower --set batch_size or image_size, or use a larger GPU")
    fraction = round(1.0 / per_gpu, 4)
    console.print(f"--gpus-per-trial auto: {len(configs)} config(s) measured, the largest step peaks at "
                  f"{peak / 2 ** 30:.2f} GiB ({worst['model']}, batch {worst['batch_size']}); {per_gpu} trial(s) "
                  f"per {gpu_bytes / 2 ** 30:.0f} GiB GPU -> --gpus-per-trial {fraction:g}")
    return fraction


# --- host memory: measured per footprint, asked of Ray --------------------------------------------------------------

def process_memory(pid: int | str = "self") -> dict[str, int]:
    """This (or another) process's memory from /proc, in bytes: VmHWM (peak resident), VmRSS, RssAnon (private),
    RssFile (file-backed: libraries, memory-mapped data), RssShmem (shared memory, e.g. Ray's object store),
    VmData (private writable mappings, what RLIMIT_DATA counts)."""
    text = open(f"/proc/{pid}/status").read()
    keys = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmData")
    return {k: int(m.group(1)) * 1024 if (m := re.search(rf"^{k}:\s+(\d+) kB", text, re.M)) else 0 for k in keys}


def node_memory() -> tuple[int, int]:
    """(available, total) bytes of this node's memory (/proc/meminfo: MemAvailable counts reclaimable cache)."""
    text = open("/proc/meminfo").read()
    value = lambda key: int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) * 1024  # noqa: E731
    return value("MemAvailable"), value("MemTotal")


def host_trial_bytes(peak_private: int) -> int:
    """What one trial asks of Ray, from its measured peak private memory."""
    return int(peak_private * HOST_SAFETY) + HOST_EXTRA


def measure_host_bytes(config: dict[str, Any], num_classes: int, image_size: int, val_images: int,
                       limit_bytes: int = 0, every_core: bool = False) -> dict[str, Any]:
    """One training step and one validation pass of `config`, in this (fresh) process, on its device (a GPU when
    Ray gave it one), on data stored at `image_size` that the step resizes as a trial does: {"peak": peak private
    bytes, "baseline": private bytes before it, "gpu_peak": bytes}, or
    {"exceeds": limit_bytes} when the step needed more than `limit_bytes` (so it cannot kill the node).
    `every_core`: torch uses all of the node's cores (the probe runs alone; a few MB more scratch than a trial)."""
    import torch

    from trainables.classify import train_epochs, trial_device

    if every_core:
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    cfg = TrialConfig.from_dict({**config, "max_epochs": 1, "pretrained": ""})  # weights do not change memory
    splits = probe_splits(cfg, num_classes, image_size, val_images)
    data_bytes = splits.train_x.nbytes + splits.val_x.nbytes  # in a trial these are shared, mapped pages
    device = trial_device()
    if device.type == "cuda":
        limit_bytes = 0  # CUDA reserves address space that RLIMIT_DATA would count
    before = process_memory()
    try:
        with data_limit(limit_bytes):
            for _ in train_epochs(cfg, splits, device=device):
                pass
    except (MemoryError, RuntimeError) as exc:
        if limit_bytes and is_out_of_memory(exc):
            return {"exceeds": limit_bytes}
        raise
    after = process_memory()
    shared = after["RssFile"] + after["RssShmem"]
    peak = max(after["VmHWM"] - shared - data_bytes, after["RssAnon"])
    gpu_peak = int(torch.cuda.max_memory_reserved()) if device.type == "cuda" else 0
    return {"peak": int(peak), "baseline": int(before["RssAnon"]), "gpu_peak": gpu_peak}


def footprint(config: dict[str, Any], image_size: int) -> str:
    """What a probe's memory depends on: the memory keys, the size the model sees and the data's stored size."""
    return (" ".join(f"{k}={config.get(k)!r}" for k in MEMORY_KEYS)
            + f" size={config.get('image_size') or image_size} stored={image_size}")


def describe(config: dict[str, Any], image_size: int) -> str:
    return f"{config.get('model')}, batch {config.get('batch_size')}, {config.get('image_size') or image_size} px"


def resolve_memory_per_trial(spec: SweepSpec, num_classes: int, image_size: int, val_images: int,
                             nodes: list[dict[str, float]], console: Console) -> float:
    """Bytes of memory each trial asks of Ray: measured for "auto", else --memory-per-trial. Prints how many trials
    fit at once; a trial that fits no node is a UserError now, before anything is written."""
    largest = max(nodes, key=lambda n: n.get("memory", 0), default={})
    node_bytes = int(largest.get("memory", 0))
    if spec.memory_per_trial == "auto":
        configs = memory_configs(spec)
        measured = measure_all(spec, configs, num_classes, image_size, min(val_images, EVAL_BATCH), node_bytes)
        worst, result = max(zip(configs, measured), key=lambda pair: pair[1].get("peak", math.inf))
        if "exceeds" in result:
            raise UserError(f"memory: {describe(worst, image_size)} needs more than the "
                            f"{node_bytes / GIB:.1f} GiB of memory the largest node offers Ray (one training step "
                            f"ran out); lower --set batch_size or image_size, or use a node with more memory")
        need = host_trial_bytes(result["peak"])
        reused = sum(bool(m.get("reused")) for m in measured)
        earlier = f" ({reused} by an earlier sweep on this kind of node)" if reused else ""
        how = (f"measured: {len(configs)} config(s){earlier}, the largest, {describe(worst, image_size)}, peaks at "
               f"{result['peak'] / GIB:.2f} GiB; x{HOST_SAFETY} + {HOST_EXTRA / GIB:.2f} GiB")
    else:  # given, or measured when this sweep started (a resumed or grown sweep's record)
        need, how = int(spec.memory_per_trial), "--memory-per-trial, or as measured when the sweep started"
    if need > node_bytes:
        raise UserError(f"memory: a trial needs {need / GIB:.1f} GiB ({how}), more than the {node_bytes / GIB:.1f} "
                        f"GiB of memory the largest node offers Ray; lower --set batch_size or image_size, or use a "
                        f"node with more memory")
    at_once, limit = trials_at_once(need, spec, largest)
    console.print(f"memory: {need / GIB:.1f} GiB per trial ({how}); {at_once} trial(s) fit at once on the largest "
                  f"node ({node_bytes / GIB:.1f} GiB for Ray, {largest.get('CPU', 0):g} CPUs; {limit} the limit)",
                  soft_wrap=True)
    return float(need)


def trials_at_once(need: int, spec: SweepSpec, node: dict[str, float]) -> tuple[int, str]:
    """How many trials run at once on `node`, and what limits it (memory, CPUs, GPUs, --max-concurrent)."""
    gpus = float(spec.gpus_per_trial) if spec.gpus_per_trial != "auto" else 0.0
    limits = {"memory is": int(node.get("memory", 0) // max(need, 1)),
              "CPUs are": int(node.get("CPU", 0) // spec.cpus_per_trial)}
    if gpus > 0:
        limits["GPUs are"] = int(node.get("GPU", 0) // gpus + 1e-9)
    if spec.max_concurrent:
        limits["--max-concurrent is"] = spec.max_concurrent
    what = min(limits, key=limits.get)
    return limits[what], what


def measure_all(spec: SweepSpec, configs: list[dict], num_classes: int, image_size: int, val_images: int,
                node_bytes: int) -> list[dict[str, Any]]:
    """measure_host_bytes for each config, each in a fresh Ray worker where trials run, one at a time (two big
    probes side by side could exhaust a node: what they need is what is being measured), each using all of its
    node's cores and capped at the largest node's memory. Results are reused from (and kept in) the probes file."""
    import ray

    gpus = float(spec.gpus_per_trial) if spec.gpus_per_trial != "auto" else 0.0
    known = _load_probes()
    keys = [_probe_key(c, num_classes, image_size, val_images, gpus > 0) for c in configs]
    reused = {k for k in keys if k in known}
    task = ray.remote(num_cpus=spec.cpus_per_trial, num_gpus=gpus, max_calls=1, max_retries=0)(measure_host_bytes)
    for config, key in zip(configs, keys):
        if key not in known:  # trials get data at the stored size and resize it on their device: so does the probe
            known[key] = _probe_result(task.remote(config, num_classes, image_size, val_images, node_bytes, True),
                                       config, image_size, node_bytes)
    _save_probes({k: v for k, v in known.items() if "exceeds" not in v})
    return [{**known[k], "reused": k in reused} for k in keys]


def _probe_result(ref, config: dict, image_size: int, node_bytes: int) -> dict[str, Any]:
    """A probe's result; a probe Ray killed for memory ran out too, and any other failure is one line."""
    import ray
    from ray.exceptions import OutOfMemoryError, RayError, RayTaskError

    try:
        return ray.get(ref)
    except OutOfMemoryError:
        return {"exceeds": node_bytes}
    except RayTaskError as exc:
        last = [line for line in str(exc).strip().splitlines() if line.strip()][-1]
        raise UserError(f"memory: measuring one training step of {describe(config, image_size)} failed: "
                        f"{last.strip()[:300]}") from None
    except RayError as exc:  # the probe's worker died (e.g. the kernel's OOM killer)
        raise UserError(f"memory: measuring one training step of {describe(config, image_size)} failed: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None


def _alive_nodes() -> list[dict[str, float]]:
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def _probe_key(config: dict, num_classes: int, image_size: int, val_images: int, gpu: bool) -> str:
    import platform

    import torch

    # "probe 2": probes before it fed data at the model's size, not the stored one: measured again
    what = (f"probe 2 {footprint(config, image_size)} classes={num_classes} val={val_images} gpu={gpu} "
            f"torch={torch.__version__} cpu={platform.machine()} {cpu_model()}")
    return hashlib.sha256(what.encode()).hexdigest()[:20]


def cpu_model() -> str:
    try:
        return next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                    "")
    except OSError:
        return ""


def _probes_path():
    from trainables.cache import cache_root

    return cache_root() / PROBES_FILE


def _load_probes() -> dict[str, dict]:
    try:
        return json.loads(_probes_path().read_text())
    except (OSError, ValueError):
        return {}


def _save_probes(probes: dict[str, dict]) -> None:
    path = _probes_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(probes, indent=1))
        os.replace(tmp, path)
    except OSError:  # a read-only cache folder: the next sweep measures again
        pass


# --- a trial held to its request ------------------------------------------------------------------------------------

class TrialOutOfMemory(MemoryError):
    """A trial ran out of memory; the message says what it asked for and what the node had (one line)."""


@dataclass(frozen=True)
class TrialGuard:
    """What a trial asked for: Ray's `memory` (bytes, 0: nothing asked) and its GPU share."""

    memory_bytes: int = 0
    gpu_fraction: float = 0.0


def is_out_of_memory(error: BaseException) -> bool:
    """MemoryError, or an allocator's failure (torch's CPU allocator, CUDA) saying it ran out of memory."""
    text = str(error)
    return isinstance(error, MemoryError) or any(marker in text for marker in (
        "out of memory", "can't allocate memory", "Cannot allocate memory", "not enough memory"))


@contextlib.contextmanager
def data_limit(limit_bytes: int) -> Iterator[None]:
    """Cap this process's private memory at about `limit_bytes` (RLIMIT_DATA, soft, which also counts reserved but
    untouched pages: those held now are added), so an allocation beyond it fails with MemoryError instead of the
    node running out; restored on the way out. 0: no cap."""
    import resource

    if not limit_bytes:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    now = process_memory()
    cap = now["VmData"] + max(int(limit_bytes) - now["RssAnon"], 0)  # VmData also counts untouched reservations
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def oom_reason(error: BaseException, guard: TrialGuard, on_gpu: bool) -> str:
    """One line for trials.parquet and MLflow: what ran out, what the trial asked for and reached, what was free."""
    text = " ".join(str(error).split())
    tried = re.search(r"tried to allocate (\d+(?:\.\d+)?) ?(bytes|[KMG]iB)", text)
    what = (f"allocating {tried.group(1)} {tried.group(2)} failed" if tried else
            re.sub(r"^\[enforce fail[^]]*\]\s*(err == 0\.\s*)?", "", text)[:200] or type(error).__name__)
    available, total = node_memory()
    mine = process_memory()
    if on_gpu:
        import torch

        free, gpu_total = torch.cuda.mem_get_info()
        where = f"the GPU had {free / GIB:.2f} of {gpu_total / GIB:.1f} GiB free"
    else:
        where = f"the node had {available / GIB:.2f} of {total / GIB:.1f} GiB available"
    asked = (f"it asked Ray for {guard.memory_bytes / GIB:.2f} GiB and may use {GUARD_HEADROOM:g}x that"
             if guard.memory_bytes else "it asked Ray for no memory")
    return (f"out of memory ({'GPU' if on_gpu else 'host'}): {what}; {asked}, its peak resident memory reached "
            f"{mine['VmHWM'] / GIB:.2f} GiB; {where}. Lower batch_size or image_size, or raise --memory-per-trial")


def train_classifier(config: dict[str, Any], data, guard: TrialGuard | None = None, costs=None) -> None:
    """The trial Ray runs: trainables.classify.train_classifier with its GPU share known to its data placement and,
    on CPU, its private memory capped at GUARD_HEADROOM x its request; running out is one TrialOutOfMemory line.
    (Named like the function it wraps: a restored experiment must name the trainable it started with.)
    With `costs` (tuner.costs.CostBook): the footprint's costs go with every result, and a config breaking a cost
    budget reports them once, at epoch 0, and ends untrained (`infeasible`)."""
    import torch

    from trainables import classify, placement

    extra = costs.of(config) if costs is not None else {}
    if costs is not None and not costs.trainable(extra):
        from ray import tune

        tune.report({"epoch": 0, "infeasible": 1, "val_top1": float("nan"), **extra})  # Tune wants its metric
        return

    guard = guard or TrialGuard()
    placement.set_trial_budget(gpu_fraction=guard.gpu_fraction)
    on_gpu = torch.cuda.is_available()
    limit = 0 if on_gpu else int(guard.memory_bytes * GUARD_HEADROOM)  # CUDA maps memory RLIMIT_DATA would count
    try:
        with data_limit(limit):
            classify.train_classifier(config, data, extra)
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise TrialOutOfMemory(oom_reason(exc, guard, on_gpu)) from exc
