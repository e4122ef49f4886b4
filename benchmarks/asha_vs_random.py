"""Figure 4, `asha_epoch_fraction` and `asha_best_minus_random_best`: the epochs TPE + ASHA spends vs full-budget
random search with as many trials, and the difference of their best validation top-1, with the noise it is
judged by."""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any

import numpy as np

from benchmarks.common import TARGETS, Settings, fit, history, subset, sweep_spec, torch_threads

TARGET = TARGETS["asha_epoch_fraction"]
NOISE_SIGMAS = 2  # a difference of the best val top-1 within this many combined standard deviations is noise
SETS = ["model=cnn_basic", "width=0.25"]


def bench_asha_vs_random(data, s: Settings, storage: str) -> dict[str, Any]:
    """Epochs TPE + ASHA spends vs full-budget random search with as many trials, and their best val top-1.

    Both sweep the resnet_rsb space on digits with model=cnn_basic width 0.25 at 16 px (the space's digits
    settings), `asha_trials` trials of up to `asha_epochs` epochs, `concurrency` at a time, the real trainable.
    ours: tuner.experiment.tune_config (OptunaSearch TPE + ASHAScheduler(time_attr='epoch'), the space's grace
    period and reduction factor); random: BasicVariantGenerator, FIFO, every trial runs all epochs.
    Noise: the validation split is small, so each winner's config is retrained with `seed_repeats` other seeds
    for the full budget; the spread of those, the top-3 spread and the binomial standard error of the
    validation accuracy are reported, and the difference is called 'within noise' unless it exceeds
    NOISE_SIGMAS x the combined seed-to-seed standard deviation (binomial standard error when no repeats).
    """
    from ray import tune

    from trainables.classify import train_classifier

    splits = subset(data, s.asha_train_images) if s.asha_train_images else data.without_test()
    trainable = tune.with_resources(tune.with_parameters(train_classifier, data=splits), {"cpu": 1})
    sweeps = {kind: run_sweep(kind, trainable, s, storage) for kind in ("asha", "random")}
    asha_cfg = sweeps["asha"]["spec"].search_space.asha
    n_val = len(splits.val_y)
    out: dict[str, Any] = {
        "space": f"resnet_rsb on digits ({len(splits.train_y)} train / {n_val} val images), model=cnn_basic "
                 f"width=0.25 image_size=16 batch 32",
        "trials": s.asha_trials, "max_epochs": s.asha_epochs, "concurrency": s.concurrency, "val_images": n_val,
        "asha_settings": dataclasses.asdict(asha_cfg), "seed_repeats": s.seed_repeats,
    }
    for kind, sweep in sweeps.items():
        out[kind] = sweep_summary(sweep, splits, s)
    asha, rand = out["asha"], out["random"]
    out["epoch_fraction"] = asha["epochs_used"] / rand["epochs_used"]
    out["wall_fraction"] = asha["wall_s"] / rand["wall_s"]
    out["best_minus_random_best"] = asha["best_val_top1"] - rand["best_val_top1"]
    out["winner_seed_mean_difference"] = asha["winner_seed_mean"] - rand["winner_seed_mean"]
    if s.seed_repeats > 0:
        noise = math.hypot(asha["winner_seed_std"], rand["winner_seed_std"])
        out["noise_judged_by"] = (f"{NOISE_SIGMAS} x combined std of each winner's best val top-1 over seeds "
                                  f"(sweep seed + {s.seed_repeats} retrainings)")
    else:
        noise = math.hypot(asha["binomial_se"], rand["binomial_se"])
        out["noise_judged_by"] = f"{NOISE_SIGMAS} x combined binomial standard error on {n_val} validation images"
    out["noise_pp"] = NOISE_SIGMAS * noise
    out["difference_within_noise"] = abs(out["best_minus_random_best"]) <= NOISE_SIGMAS * noise
    out["expected_epoch_fraction"] = simulate_asha_fraction(s.asha_trials, s.asha_epochs, asha_cfg.grace_period,
                                                            asha_cfg.reduction_factor, s.concurrency)
    out["target_epoch_fraction"] = float(TARGET.value)
    out["met"] = TARGET.met(out["epoch_fraction"])
    return out


def run_sweep(kind: str, trainable, s: Settings, storage: str) -> dict[str, Any]:
    """One sweep of `trainable`: `asha` (the sweep's own tune_config) or `random` (full budget, FIFO); its trials
    best first, its wall time and its spec."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from tuner.experiment import make_searcher, run_config, tune_config

    spec = sweep_spec(storage, f"{kind}_sweep", num_samples=s.asha_trials, max_epochs=s.asha_epochs, sets=SETS,
                      concurrency=s.concurrency)
    if kind == "asha":
        tconf = tune_config(spec, spec.num_samples, make_searcher(spec))
    else:
        space = spec.search_space
        tconf = tune.TuneConfig(metric=space.metric, mode=space.mode,
                                search_alg=BasicVariantGenerator(random_state=spec.seed),
                                scheduler=FIFOScheduler(), num_samples=spec.num_samples,
                                max_concurrent_trials=spec.max_concurrent, reuse_actors=True)
    grid, wall = fit(trainable, param_space=spec.param_space(), tune_config=tconf,
                     run_config=run_config(spec, [], spec.sweep_dir))
    trials = []
    for result in grid:
        rows = history(result)
        trials.append({"epochs": int(max(r["epoch"] for r in rows)),
                       "best_val_top1": float(max(r["val_top1"] for r in rows)), "config": result.config})
    trials.sort(key=lambda t: -t["best_val_top1"])
    return {"trials": trials, "wall_s": wall, "spec": spec}


def sweep_summary(sweep: dict[str, Any], splits, s: Settings) -> dict[str, Any]:
    """Epochs used, the best and top-3 val top-1 with their spread, and the winner retrained over seeds."""
    trials = sweep["trials"]
    n_val = len(splits.val_y)
    best = trials[0]["best_val_top1"]
    top3 = [t["best_val_top1"] for t in trials[:3]]
    winner_seeds = [best] + retrain(trials[0]["config"], splits, s.seed_repeats)
    return {
        "epochs_used": sum(t["epochs"] for t in trials), "wall_s": sweep["wall_s"],
        "trials_stopped_early": sum(t["epochs"] < s.asha_epochs for t in trials),
        "best_val_top1": best, "top3_val_top1": top3,
        "top3_std": statistics.stdev(top3) if len(top3) > 1 else 0.0,  # one value (a 1-trial sweep): no spread
        "binomial_se": 100 * math.sqrt(max(best, 1e-9) / 100 * (1 - best / 100) / n_val),
        "winner_val_top1_by_seed": winner_seeds, "winner_seed_mean": statistics.fmean(winner_seeds),
        "winner_seed_std": statistics.stdev(winner_seeds) if len(winner_seeds) > 1 else 0.0,  # 0 seed_repeats
    }


def simulate_asha_fraction(trials: int, max_t: int, grace: int, rf: int, concurrency: int, sweeps: int = 300,
                           seed: int = 0) -> dict[str, float] | str:
    """Epoch fraction that Ray's own async-ASHA rung logic gives on synthetic sweeps of this size.

    Each trial has a random quality, a rising learning curve and per-epoch noise; `concurrency` trials run at a
    time with epochs of random length. Tells what fraction this size allows at all (one real sweep varies a lot),
    e.g. the first trial to reach a rung is never stopped, so few trials leave little to save.
    """
    import heapq

    try:
        from ray.tune.schedulers import TrialScheduler
        from ray.tune.schedulers.async_hyperband import _Bracket  # Ray's own rung logic; private: absent in some Ray
    except ImportError:
        return "not available in this Ray version"

    class _Trial:
        def __init__(self, i: int) -> None:
            self.trial_id = str(i)

    rng = np.random.default_rng(seed)
    fractions = []
    for _ in range(sweeps):
        bracket = _Bracket(min_t=grace, max_t=max_t, reduction_factor=rf, s=0, stop_last_trials=True)
        quality = rng.normal(size=trials)
        epochs = [0] * trials
        running = [(rng.uniform(0.9, 1.1), i) for i in range(min(concurrency, trials))]
        heapq.heapify(running)
        started = len(running)
        while running:
            now, i = heapq.heappop(running)
            epochs[i] += 1
            reward = quality[i] + 0.3 * math.log(epochs[i]) + rng.normal(scale=0.1)
            stop = bracket.on_result(_Trial(i), epochs[i], reward) == TrialScheduler.STOP or epochs[i] >= max_t
            if not stop:
                heapq.heappush(running, (now + rng.uniform(0.9, 1.1), i))
            elif started < trials:
                heapq.heappush(running, (now + rng.uniform(0.9, 1.1), started))
                started += 1
        fractions.append(sum(epochs) / (trials * max_t))
    return {"mean": float(np.mean(fractions)), "p10": float(np.percentile(fractions, 10)),
            "p90": float(np.percentile(fractions, 90)), "sweeps": sweeps}


def retrain(config: dict[str, Any], splits, repeats: int) -> list[float]:
    """Best val top-1 of `config` trained for its full budget with seeds 1..repeats (plain loop, no Ray)."""
    import torch

    from trainables.classify import train_epochs
    from trainables.config import TrialConfig

    scores = []
    with torch_threads(1):  # as in a trial; more threads only fight other load for the cores
        for seed in range(1, repeats + 1):
            cfg = TrialConfig.from_dict({**config, "seed": seed})
            rows = [m for m, _ in train_epochs(cfg, splits, device=torch.device("cpu"))]
            scores.append(float(rows[-1]["best_val_top1"]))
    return scores
