"""Two-stage spaces: a sweep, then one follow-up sweep per model family starting from that family's best weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich.console import Console

from trainables.classify import CHECKPOINT_FILE
from tuner.final import best_per_family
from tuner.spec import SweepSpec, validate_trial_configs
from tuner.sweep import SweepOutcome, run_sweep, start_ray

# What makes a checkpoint loadable: carried from the stage-1 winner into its stage-2 sweep.
ARCHITECTURE_KEYS = ("model", "width", "vit_patch", "vit_depth", "vit_dim", "vit_heads", "vit_mlp_dim", "image_size")


def run_stages(spec: SweepSpec, console: Console, dataset_given: bool) -> list[SweepOutcome]:
    """Stage 1 as a sweep; for each model family, stage 2 as a sweep whose trials start from its best checkpoint.

    The stage-2 data set is the stage-2 space's own unless the user named one (then both stages use it).
    """
    import ray

    started = start_ray(spec.address)  # one Ray instance for every stage
    try:
        first = run_sweep(spec, console=console)
        outcomes = [first]
        stage2 = spec.search_space.then
        for family, (row,) in best_per_family(first.rows).items():
            checkpoint = str(Path(row["checkpoint"]) / CHECKPOINT_FILE)
            carried = {k: row[k] for k in ARCHITECTURE_KEYS if row.get(k) is not None}
            next_spec = dataclasses.replace(
                spec, space=stage2.name, name=f"{spec.name}-stage2-{family}",
                dataset=spec.dataset if dataset_given else stage2.dataset,
                max_epochs=spec.overrides.get("max_epochs", stage2.max_epochs),
                overrides={**carried, **{k: v for k, v in spec.overrides.items() if k in ("max_epochs", "seed")},
                           "pretrained": checkpoint})
            validate_trial_configs(next_spec)
            console.print(f"[bold]stage 2[/bold] for {family}: from trial {row['trial_id']} "
                          f"(val top-1 {row['best_val_top1']:.2f}), {checkpoint}")
            tags = {"stage1.parent_run_id": first.parent_run_id, "stage1.trial_id": row["trial_id"],
                    "stage1.checkpoint": checkpoint}
            if first.winner and first.winner["trial_id"] == row["trial_id"] and first.model_uri:
                tags["stage1.registered_model"] = first.model_uri
            outcomes.append(run_sweep(next_spec, console=console, extra_tags=tags))
        return outcomes
    finally:
        if started:
            ray.shutdown()
