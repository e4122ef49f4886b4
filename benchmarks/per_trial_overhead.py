"""Figure 3, `per_trial_overhead_s`: the seconds each trial adds to a sweep beyond its own work, plain Ray Tune
defaults vs our configuration, and where those seconds go.

The trainables here are module-level functions of an importable module: Ray pickles them by reference (what
`__main__` defines it would pickle by value).
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import TARGETS, Settings, fit, fit_timed, history, subset, sweep_spec, torch_threads

TARGET = TARGETS["per_trial_overhead_s"]


def fixed_work(iters: int) -> float:
    """The same CPU work every time (1 torch thread); returns the seconds it took."""
    import torch

    torch.set_num_threads(1)
    a = torch.full((128, 128), 0.01)
    t0 = time.perf_counter()
    for _ in range(iters):
        a = torch.tanh(a @ a)
    return time.perf_counter() - t0


def calibrate_work(seconds: float) -> int:
    """Iterations of fixed_work taking about `seconds` here."""
    with torch_threads(1):
        fixed_work(20)
        per_iter = fixed_work(200) / 200
    return max(1, round(seconds / per_iter))


def trivial_trial(config: dict[str, Any]) -> None:
    """Plain Ray Tune style: imports torch itself (a fresh process pays for it), fixed work, one report."""
    import torch  # noqa: F401  (the point: a per-trial process imports it)
    from ray import tune

    t_start = time.time()
    work_s = fixed_work(config["work_iters"])
    tune.report({"epoch": 1, "val_top1": 0.0, "work_s": work_s, "pid": os.getpid(), "t_start": t_start,
                 "t_end": time.time()})


def trivial_trial_with_data(config: dict[str, Any], data, work_iters: int) -> None:
    """Our style: the data set arrives through tune.with_parameters (the object store), same fixed work."""
    import torch  # noqa: F401
    from ray import tune

    t_start = time.time()
    assert data.train_x.size > 0
    work_s = fixed_work(work_iters)
    tune.report({"epoch": 1, "val_top1": 0.0, "work_s": work_s, "pid": os.getpid(), "t_start": t_start,
                 "t_end": time.time()})


def bench_per_trial_overhead(data, s: Settings, storage: str) -> dict[str, Any]:
    """Seconds each trial adds to a sweep beyond its own work: (wall - sum(work) / concurrency) / trials.

    `overhead_trials` trials, `concurrency` at a time with 1 CPU each, wall from building the Tuner to the
    return of fit() (Ray itself already running). Three sweeps:
      naive_defaults  a trivial fixed-work function trainable that imports torch, plain Ray Tune defaults:
                      TuneConfig(reuse_actors=False): a fresh worker process per trial, default RunConfig;
      ours_trivial    the same fixed work with our configuration: tuner.experiment.tune_config (OptunaSearch +
                      ASHA, reuse_actors=True) and run_config (checkpoint config), data via tune.with_parameters;
      ours_trainable  the real train_classifier, 1 epoch on tiny data (cnn_basic width 0.25 at 16 px), our
                      configuration; its work is the epoch_s it reports (training + validation), so model
                      building, timm's recipe, the checkpoint and the report count as overhead.
    """
    from ray import tune

    from trainables.classify import train_classifier

    n, conc = s.overhead_trials, s.concurrency
    iters = calibrate_work(s.work_s)
    out: dict[str, Any] = {"trials": n, "concurrency": conc, "work_iters": iters, "target_s": float(TARGET.value)}

    grid, t0, wall = fit_timed(
        tune.with_resources(trivial_trial, {"cpu": 1}), param_space={"work_iters": iters},
        tune_config=tune.TuneConfig(num_samples=n, max_concurrent_trials=conc, reuse_actors=False),
        run_config=tune.RunConfig(name="naive", storage_path=storage, verbose=0))
    out["naive_defaults"] = summarize(grid, t0, wall, "work_s", conc)

    trainable = tune.with_resources(
        tune.with_parameters(trivial_trial_with_data, data=data.without_test(), work_iters=iters), {"cpu": 1})
    grid, t0, wall = fit_ours(trainable, storage, "ours_trivial", s)
    out["ours_trivial"] = summarize(grid, t0, wall, "work_s", conc)

    tiny = subset(data, s.overhead_train_images, max(10, s.overhead_train_images // 2))
    trainable = tune.with_resources(tune.with_parameters(train_classifier, data=tiny), {"cpu": 1})
    grid, t0, wall = fit_ours(trainable, storage, "ours_trainable", s)
    summary = summarize(grid, t0, wall, "epoch_s", conc)
    # Tune's time_this_iter_s of the first report runs from the trainable's start: setup = that - epoch_s
    firsts = [history(r)[0] for r in grid]
    summary["in_trial_setup_s"] = sum(f["time_this_iter_s"] - f["epoch_s"] for f in firsts) / len(firsts)
    summary["data"] = f"{len(tiny.train_y)} train / {len(tiny.val_y)} val digits images, 1 epoch"
    out["ours_trainable"] = summary

    out["ours_s"] = out["ours_trivial"]["per_trial_s"]
    out["naive_s"] = out["naive_defaults"]["per_trial_s"]
    out["ratio_naive_over_ours"] = out["naive_s"] / max(out["ours_s"], 1e-9)
    out["met"] = TARGET.met(out["ours_s"]) and TARGET.met(out["ours_trainable"]["per_trial_s"])
    out["breakdown"] = overhead_breakdown(s, storage)
    return out


def fit_ours(trainable, storage: str, name: str, s: Settings):
    """`overhead_trials` 1-epoch trials of `trainable` under the sweep's own tune_config and run_config."""
    from tuner.experiment import make_searcher, run_config, tune_config

    spec = sweep_spec(storage, name, num_samples=s.overhead_trials, max_epochs=1,
                      sets=["model=cnn_basic", "width=0.25"], concurrency=s.concurrency)
    return fit_timed(trainable, param_space=spec.param_space(),
                     tune_config=tune_config(spec, spec.num_samples, make_searcher(spec)),
                     run_config=run_config(spec, [], spec.sweep_dir))


def summarize(grid, t0: float, wall: float, work_key: str, concurrency: int) -> dict[str, Any]:
    """Per-trial overhead of one sweep, and for the trivial trials a timeline: start-up, turnaround between
    trials in one process, tear-down."""
    rows = [history(r) for r in grid]
    work = [sum(row[work_key] for row in trial) for trial in rows]
    ideal = sum(work) / concurrency
    summary = {"per_trial_s": (wall - ideal) / len(rows), "wall_s": wall, "ideal_s": ideal,
               "mean_work_s": sum(work) / len(work)}
    finals = [trial[-1] for trial in rows if trial and "t_start" in trial[-1]]
    if finals:
        summary["worker_processes"] = len({f["pid"] for f in finals})
        summary["first_trial_start_s"] = min(f["t_start"] for f in finals) - t0
        summary["last_trial_end_to_fit_return_s"] = t0 + wall - max(f["t_end"] for f in finals)
        gaps = []
        for pid in {f["pid"] for f in finals}:
            mine = sorted((f for f in finals if f["pid"] == pid), key=lambda f: f["t_start"])
            gaps += [b["t_start"] - a["t_end"] for a, b in zip(mine, mine[1:])]
        if gaps:  # from one trial's report to the next trial's start in the same process
            summary["turnaround_same_process_s"] = statistics.median(gaps)
    return summary


class ProbeActor:
    """A bare Ray actor: how long one takes to start, and to import torch in it."""

    def ping(self) -> int:
        return os.getpid()

    def import_torch(self) -> float:
        t0 = time.perf_counter()
        import torch  # noqa: F401

        return time.perf_counter() - t0


def report_probe(config: dict[str, Any]) -> None:
    """Times tune.report inside a trial: plain, and with a real trial checkpoint (saved as train_classifier does)."""
    import tempfile

    import torch
    from ray import tune

    from trainables.classify import save_atomic
    from trainables.config import TrialConfig
    from trainables.models import create_model
    from trainables.recipe import create_recipe

    calls = config["calls"]
    cfg = TrialConfig.from_dict({"model": "cnn_basic", "width": 0.25, "max_epochs": 1})
    model = create_model(cfg.model, 10, image_size=16, width=cfg.width)
    recipe = create_recipe(model, cfg, 10, 10)
    model(torch.zeros(2, 3, 16, 16)).sum().backward()
    recipe.optimizer.step()  # optimizer state exists, as in a real checkpoint
    state = {"model": model.state_dict(), "recipe": recipe.state_dict(), "config": cfg.to_dict()}
    plain, save, with_ckpt = [], [], []
    epoch = 0
    for _ in range(calls):
        epoch += 1
        t0 = time.perf_counter()
        tune.report({"epoch": epoch, "val_top1": 0.0})
        plain.append(time.perf_counter() - t0)
    for i in range(calls):
        epoch += 1
        with tempfile.TemporaryDirectory() as ckpt_dir:
            t0 = time.perf_counter()
            save_atomic(state, os.path.join(ckpt_dir, "checkpoint.pt"))
            t1 = time.perf_counter()
            tune.report({"epoch": epoch, "val_top1": float(i)}, checkpoint=tune.Checkpoint.from_directory(ckpt_dir))
            with_ckpt.append(time.perf_counter() - t1)
            save.append(t1 - t0)
    tune.report({"epoch": epoch + 1, "val_top1": -1.0, "report_s": statistics.median(plain),
                 "save_s": statistics.median(save), "report_with_checkpoint_s": statistics.median(with_ckpt)})


def import_time(code: str, repeats: int = 2) -> float:
    """Best-of wall time of `python -c code` in a fresh process."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def overhead_breakdown(s: Settings, storage: str) -> dict[str, Any]:
    """Where per-trial time goes: process and import costs, Ray actor start, tune.report and checkpoint cost."""
    import ray
    from ray import tune

    from tuner.experiment import run_config

    out: dict[str, Any] = {"python_start_s": None, "import_torch_s": None, "import_trainable_stack_s": None}
    if s.import_repeats:
        python = import_time("pass", s.import_repeats)
        out["python_start_s"] = python
        out["import_torch_s"] = import_time("import torch", s.import_repeats) - python
        out["import_trainable_stack_s"] = import_time(
            "import torch, timm, timm.optim, timm.scheduler, timm.loss, trainables.classify, ray.tune",
            s.import_repeats) - python
    probe = ray.remote(num_cpus=1)(ProbeActor)
    starts, imports = [], []
    for _ in range(s.actor_probes):
        t0 = time.perf_counter()
        actor = probe.remote()
        ray.get(actor.ping.remote())
        starts.append(time.perf_counter() - t0)
        imports.append(ray.get(actor.import_torch.remote()))
        ray.kill(actor)
    out["ray_actor_start_s"] = statistics.median(starts)
    out["import_torch_in_actor_s"] = statistics.median(imports)

    spec = sweep_spec(storage, "report_probe", num_samples=1, max_epochs=1, sets=[], concurrency=1)
    grid, _ = fit(tune.with_resources(report_probe, {"cpu": 1}), param_space={"calls": s.report_calls},
                  tune_config=tune.TuneConfig(num_samples=1, metric="val_top1", mode="max"),
                  run_config=run_config(spec, [], spec.sweep_dir))
    last = grid[0].metrics
    out["tune_report_s"] = last["report_s"]
    out["checkpoint_save_s"] = last["save_s"]
    out["tune_report_with_checkpoint_s"] = last["report_with_checkpoint_s"]
    return out
