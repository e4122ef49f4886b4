"""The worker of `make gpu-check`: runs the named sections in order, each in try/except, at GPU or CPU sizes, and
appends one event per start and per result to the events file that the supervisor (gpucheck.__main__) watches.

    python -m gpucheck.sections --events FILE --out DIR --deadline EPOCH_S [--budget NAME=S ...] NAME ...

Each section gets a Budget: its own seconds, never past the global deadline; sections check it between
measurements and cut what is left (the supervisor kills a section that overruns it anyway).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

SECTIONS = ("env", "pytest", "trainable_vs_bare", "data_path", "packing", "mfu", "mfu_compile", "tier2")
DEADLINE_MARGIN_S = 5.0  # a section's cooperative budget ends this long before the supervisor's hard deadline
OPTIONAL_MODULES = ("ray", "mlflow", "optuna", "pyarrow", "rich", "onnx", "onnxruntime", "sklearn")

DENSE_BF16_PEAK_TFLOPS = (("H200 NVL", 835.0), ("GH200", 989.0), ("H200", 989.0), ("H100 NVL", 835.0),
                          ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("L40", 181.0),
                          ("L4", 121.0), ("A10", 125.0), ("RTX 4090", 165.0), ("V100", 125.0))  # V100: fp16


def dense_bf16_peak(device_name: str) -> float | None:
    """The device's dense bf16 peak in TFLOP/s from the table, None for a device not in it."""
    for fragment, tflops in DENSE_BF16_PEAK_TFLOPS:
        if re.search(rf"(?<![\w-]){re.escape(fragment)}(?![\w])", device_name):
            return tflops
    return None


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is: the GPU form's are the real figures; the CPU form's only prove the code."""

    form: str  # "gpu" or "cpu"
    device: str
    images: int  # the CIFAR-sized training set (generated on the host, uint8, 32 px)
    val_images: int
    batch: int
    timed_epochs: int  # after one warm-up epoch
    models: tuple[str, ...] = ("cnn_basic", "resnet18", "resnet50", "vit_scratch")
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # per model, config keys (CPU: smaller nets)
    tutorial_workers: int = 4
    tutorial_steps: int = 60  # timed steps of the tutorial loop, after tutorial_warmup
    tutorial_warmup: int = 10
    mfu_batch: int = 512
    flop_count_batch: int = 8  # FLOPs are counted on a batch this big and scaled: linear in the batch
    packing_models: tuple[str, ...] = ("cnn_basic", "resnet18")
    packing_ks: tuple[int, ...] = (1, 2, 4, 8)
    packing_images: dict[str, int] = field(default_factory=lambda: {"cnn_basic": 8192, "resnet18": 4096})
    packing_window_s: float = 5.0
    budgets: dict[str, float] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        """Whether figures count: only on a GPU."""
        return self.form == "gpu"

    def config(self, model: str, **keys: Any) -> dict[str, Any]:
        """A trial config as a GPU trial trains (bf16 autocast, channels_last), never validating mid-run."""
        return {"model": model, "batch_size": self.batch, "val_every": 10_000, "opt": "adamw", "lr": 1e-3,
                "amp": True, "channels_last": True, "crop_padding": 4, "hflip": True, "seed": 0,
                **self.overrides.get(model, {}), **keys}


GPU_SIZES = Sizes("gpu", "cuda", images=50_000, val_images=1_000, batch=256, timed_epochs=2,
                  budgets={"env": 20, "pytest": 150, "trainable_vs_bare": 90, "data_path": 40, "packing": 110,
                           "mfu": 30, "mfu_compile": 90, "tier2": 600})
CPU_SIZES = Sizes("cpu", "cpu", images=128, val_images=32, batch=32, timed_epochs=1,
                  overrides={"cnn_basic": {"width": 0.25}, "resnet18": {"width": 0.125},
                             "resnet50": {"width": 0.125}, "vit_scratch": {"vit_dim": 48, "vit_depth": 2}},
                  tutorial_steps=4, tutorial_warmup=2, mfu_batch=32, flop_count_batch=4, packing_ks=(1, 2),
                  packing_images={"cnn_basic": 128, "resnet18": 128}, packing_window_s=0.5,
                  # generous: a guard against a hang, not a target (a shared 2-core machine can be 4x slower)
                  budgets={"env": 60, "pytest": 240, "trainable_vs_bare": 120, "data_path": 90, "packing": 120,
                           "mfu": 60, "mfu_compile": 10, "tier2": 10})


def sizes_for(device: str) -> Sizes:
    return GPU_SIZES if device == "cuda" else CPU_SIZES


@dataclass(frozen=True)
class Budget:
    """A section's time: `seconds` from its start, and never past the global deadline (time.time())."""

    seconds: float
    deadline: float

    def left(self) -> float:
        return self.deadline - time.time()

    def spent(self, need: float = 0.0) -> bool:
        """Whether less than `need` seconds are left."""
        return self.left() <= need


def start_budget(seconds: float, global_deadline: float) -> Budget:
    return Budget(seconds, min(time.time() + seconds, global_deadline - DEADLINE_MARGIN_S))


def error_line(exc: BaseException, limit: int = 300) -> str:
    """The exception as one line: its type and first line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:limit]


def importable(name: str) -> bool:
    """Whether `name` imports here, without importing it (a blocked or missing module: False)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def machine(sizes: Sizes, budget: Budget, out: Path) -> dict[str, Any]:
    """The env section: versions, the device, its dense bf16 peak, which optional modules import."""
    import timm
    import torch
    import torchvision

    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm.__version__, "platform": platform.platform(), "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda, "cpus_usable": len(os.sched_getaffinity(0)),
        "load_average_start": list(os.getloadavg()), "form": sizes.form,
        "importable": {m: importable(m) for m in OPTIONAL_MODULES},
    }
    if sizes.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update({"device_name": props.name, "device_count": torch.cuda.device_count(),
                     "device_memory_bytes": int(props.total_memory), "capability": f"{props.major}.{props.minor}",
                     "cudnn": torch.backends.cudnn.version(), "dense_bf16_peak_tflops": dense_bf16_peak(props.name)})
    return {"machine": info}


# each section's function, imported only when it runs: a module that cannot import fails its own section alone
SECTION_FUNCTIONS = {"env": "gpucheck.sections:machine", "pytest": "gpucheck.checks:run_gpu_tests",
                     "trainable_vs_bare": "gpucheck.figures:trainable_vs_bare", "data_path": "gpucheck.figures:data_path",
                     "packing": "gpucheck.figures:packing", "mfu": "gpucheck.figures:mfu",
                     "mfu_compile": "gpucheck.figures:mfu_compiled", "tier2": "gpucheck.tier2:sweeps"}


def section_function(name: str) -> Callable[[Sizes, Budget, Path], dict[str, Any]]:
    import importlib

    module, _, attr = SECTION_FUNCTIONS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def release_memory() -> None:
    """What a finished section left cached on the GPU goes back, so the next one (packed trials) finds it free."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


_EVENTS: list[Path] = []  # the events file of this worker (set by main)


def emit(events: Path, **event: Any) -> None:
    with open(events, "a") as f:
        f.write(json.dumps({"t": time.time(), **event}, default=str) + "\n")


@contextlib.contextmanager
def child_group(pid: int) -> Iterator[None]:
    """While a subprocess started in its own process group (pytest, a sweep) runs: if the supervisor cuts this
    worker it kills that group too, so nothing is left running after gpu-check; once it has ended, never."""
    if _EVENTS:
        emit(_EVENTS[0], event="child", pgid=pid)
    try:
        yield
    finally:
        if _EVENTS:
            emit(_EVENTS[0], event="child_ended", pgid=pid)


def run_section(name: str, sizes: Sizes, budget: Budget, out: Path) -> dict[str, Any]:
    """One section in try/except: its result, or the error (one line, and the traceback's tail for the JSON)."""
    t0 = time.perf_counter()
    try:
        result = section_function(name)(sizes, budget, out)
        status = result.pop("status", "ok")
        error = result.pop("error", "")
    except Exception as exc:  # noqa: BLE001 - recorded; the next section still runs
        result, status, error = {"traceback": traceback.format_exc()[-3000:]}, "error", error_line(exc)
    finally:
        release_memory()
    return {"status": status, "error": error, "elapsed_s": time.perf_counter() - t0, "result": result}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gpucheck.sections")
    p.add_argument("sections", nargs="+", choices=SECTIONS)
    p.add_argument("--events", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--deadline", type=float, required=True, help="global deadline, seconds since the epoch")
    p.add_argument("--budget", action="append", default=[], metavar="NAME=S", help="a section's own seconds")
    args = p.parse_args(argv)
    import torch

    sizes = sizes_for("cuda" if torch.cuda.is_available() else "cpu")
    if sizes.form == "cpu":
        torch.set_num_threads(1)  # a shared CPU: more threads than free cores spin-wait, 10x slower at times
    budgets = {**sizes.budgets, **{k: float(v) for k, v in (b.split("=", 1) for b in args.budget)}}
    sizes = dataclasses.replace(sizes, budgets=budgets)
    _EVENTS[:] = [args.events]
    for name in args.sections:
        emit(args.events, event="start", section=name, budget_s=budgets[name], form=sizes.form)
        budget = start_budget(budgets[name], args.deadline)
        outcome = run_section(name, sizes, budget, args.out)
        emit(args.events, event="done", section=name, budget_s=budgets[name], **outcome)
        if "CUDA error" in outcome["error"]:  # a sticky CUDA error spoils this process: a fresh worker goes on
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
