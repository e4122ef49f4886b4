"""--reseed K: re-train each model family's best configs with K new seeds, so no lucky seed picks the winner.

The copies run as one more Tune experiment (STORAGE/NAME/reseed/, reseed-<k>/ in a grown sweep's round k) at the
full epoch budget, without early stopping by the scheduler, and land in reseeds.parquet. tuner.final then picks
each family's config by the mean validation top-1 over its copies.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console

from trainables.config import TrialConfig
from tuner import experiment, results
from tuner.final import best_per_family
from tuner.folder import RESEED_DIR, RESEEDS_FILE, SweepFolder
from tuner.spec import SweepSpec

SEED_STRIDE = 1000  # the k-th copy of a config trains with seed + k * this


def run_reseeds(spec: SweepSpec, folder: SweepFolder, rows: list[dict], trainable, callbacks: list,
                round_index: int, console: Console) -> list[dict[str, Any]]:
    """Re-train the top configs not re-trained before (in an earlier round of a grown sweep); every copy, old and
    new, is returned and written to reseeds.parquet."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    earlier = folder.read_trials(RESEEDS_FILE) if folder.file(RESEEDS_FILE).is_file() else []
    done = set(group_reseeds(rows, [dict(r) for r in earlier]))
    points = reseed_points(rows, spec.reseed_top, spec.reseed, spec.seed, done=done)
    path = folder.file(RESEED_DIR if not round_index else f"{RESEED_DIR}-{round_index}")
    if not points and not tune.Tuner.can_restore(str(path)):
        return earlier
    console.print(f"re-training the top {spec.reseed_top} config(s) of each model with {spec.reseed} new seed(s): "
                  f"{len(points)} trials")
    searcher, param_space = experiment.preset_points(points) if points else (None, None)
    grid, _ = experiment.fit(spec, path, trainable, callbacks, num_samples=len(points), searcher=lambda: searcher,
                             param_space=param_space, scheduler=FIFOScheduler())
    reseed_rows = results.merge(earlier, results.trial_rows(grid))
    folder.write_trials(reseed_rows, RESEEDS_FILE)
    return reseed_rows


def reseed_points(rows: list[dict], top: int, seeds: int, base_seed: int,
                  done: set[str] = frozenset()) -> list[dict[str, Any]]:
    """Configs to re-train: each family's `top` best trials (but those in `done`), each with `seeds` new seeds."""
    points = []
    for leaders in best_per_family(rows, top=top).values():
        for leader in leaders:
            if leader["trial_id"] in done:
                continue
            config = config_of(leader)
            points += [{**config, "seed": base_seed + SEED_STRIDE * k} for k in range(1, seeds + 1)]
    return points


def group_reseeds(rows: list[dict], reseed_rows: list[dict]) -> dict[str, list[dict]]:
    """searched trial_id -> the re-trained copies of its config (matched on every config key but the seed)."""
    by_config = {_config_key(row): row["trial_id"] for row in rows}
    groups: dict[str, list[dict]] = {}
    for copy in reseed_rows:
        origin = by_config.get(_config_key(copy))
        if origin is not None:
            copy["reseed_of"] = origin
            groups.setdefault(origin, []).append(copy)
    return groups


def config_of(row: dict) -> dict[str, Any]:
    """The trial config a trials.parquet row trained with."""
    return {k: row[k] for k in TrialConfig.keys() if row.get(k) is not None}


def _config_key(row: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in config_of(row).items() if k != "seed"))
