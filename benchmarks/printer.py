"""The benchmark's report: the figures as rich tables (headline figures with their targets, then the detail
behind each), and the results as JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.common import TARGETS
from benchmarks.cost_repeatability import cost_rows, print_cost_detail

TRAINABLE, AUGMENT = TARGETS["trainable_vs_bare"], TARGETS["augment_vs_torchvision"]
OVERHEAD, ASHA = TARGETS["per_trial_overhead_s"], TARGETS["asha_epoch_fraction"]
DRIVER_RSS = TARGETS["driver_rss_per_decoded_byte"]
MIB = 2 ** 20


def write_json(result: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2, default=str) + "\n")


def print_report(result: dict[str, Any], console) -> None:
    """The machine, the figures table, then the detail of each figure measured."""
    print_header(result, console)
    console.print(figures_table(result))
    tb, av, po, ad = (result[k] for k in ("trainable_vs_bare", "augment_vs_torchvision", "per_trial_overhead_s",
                                          "asha_details"))
    if isinstance(tb, dict):
        print_trainable_detail(tb, console)
    if isinstance(av, dict):
        print_augment_detail(av, console)
    if isinstance(po, dict):
        print_overhead_detail(po, console)
    if isinstance(ad, dict):
        print_asha_detail(ad, console)
    print_data_detail(result, console)
    print_cost_detail(result.get("cost_repeatability"), console)
    console.print(f"total {result['total_wall_s']:.0f} s")


def num(x: Any, fmt: str = ".3g") -> str:
    """A number in `fmt`; anything else (a 'not measured' string, '-') as it is."""
    return format(x, fmt) if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def met(ok: Any) -> str:
    return "[green]yes[/green]" if ok is True else "[red]no[/red]" if ok is False else "-"


def print_header(result: dict[str, Any], console) -> None:
    m = result["machine"]
    console.print(f"[bold]sweeps benchmark[/bold] ({result['settings']['name']})  {m['date']}  load average "
                  f"{m['load_average_start'][0]:.2f} at start, {m.get('load_average_end', [math.nan])[0]:.2f} at end")
    console.print(f"{m['cpu_model']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable), "
                  f"{m.get('gpu', 'no GPU')}; Python {m['python']}, torch {m['torch']}, torchvision "
                  f"{m['torchvision']}, timm {m['timm']}, Ray {m['ray']}")
    if result.get("ray_start_s") is not None:
        console.print(f"Ray start (once, not in any figure): {result['ray_start_s']:.1f} s")


def figures_table(result: dict[str, Any]):
    """One row per headline figure: ours, the baseline, their ratio, the target and whether it is met."""
    from rich.table import Table

    table = Table(title="Figures (ratio = ours / baseline)")
    for col in ("figure", "ours", "baseline", "ratio", "target", "met"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    rows = (trainable_rows(result["trainable_vs_bare"]) + augment_rows(result["augment_vs_torchvision"])
            + overhead_rows(result["per_trial_overhead_s"]) + asha_rows(result["asha_details"])
            + gpu_rows(result["gpu_images_per_s"], result["packing_speedup"]) + data_rows(result)
            + cost_rows(result.get("cost_repeatability", "not measured")))
    for row in rows:
        table.add_row(*row)
    return table


def trainable_rows(tb: Any) -> list[tuple[str, ...]]:
    if not isinstance(tb, dict):
        return [("trainable_vs_bare", tb, "", "", str(TRAINABLE), "-")]
    rows = [("trainable_vs_bare: train_epochs vs bare loop, images/s", num(tb["ours_images_per_s"], ".1f"),
             num(tb["bare_images_per_s"], ".1f"), num(tb["ratio"], ".3f"), str(TRAINABLE),
             met(TRAINABLE.met(tb["ratio"])))]
    if "ray_trial_images_per_s" in tb:
        rows.append(("trainable_vs_bare: Ray Tune trial vs bare loop, images/s",
                     num(tb["ray_trial_images_per_s"], ".1f"), num(tb["ray_trial_bare_images_per_s"], ".1f"),
                     num(tb["ray_trial_ratio"], ".3f"), str(TRAINABLE), met(TRAINABLE.met(tb["ray_trial_ratio"]))))
    if "small_model" in tb:
        sm = tb["small_model"]
        rows.append((f"  (small model: {sm['model']}, batch {sm['batch_size']})", num(sm["ours_images_per_s"], ".0f"),
                     num(sm["bare_images_per_s"], ".0f"), num(sm["ratio"], ".3f"), "", "-"))
    return rows


def augment_rows(av: Any) -> list[tuple[str, ...]]:
    if not isinstance(av, dict):
        return [("augment_vs_torchvision", av, "", "", str(AUGMENT), "-")]
    return [("augment_vs_torchvision: images/s", num(av["ours_images_per_s"], ".0f"),
             num(av["torchvision_images_per_s"], ".0f"), num(av["ratio"], ".1f"), str(AUGMENT), met(av["met"]))]


def overhead_rows(po: Any) -> list[tuple[str, ...]]:
    if not isinstance(po, dict):
        return [("per_trial_overhead_s", po, "", "", str(OVERHEAD), "-")]
    ours_trainable = po["ours_trainable"]["per_trial_s"]
    return [("per_trial_overhead_s: trivial trial, ours vs naive defaults", num(po["ours_s"], ".2f"),
             num(po["naive_s"], ".2f"), num(po["ours_s"] / po["naive_s"], ".2f"), str(OVERHEAD),
             met(OVERHEAD.met(po["ours_s"]))),
            ("per_trial_overhead_s: our trainable (tiny data), ours config", num(ours_trainable, ".2f"), "", "",
             str(OVERHEAD), met(OVERHEAD.met(ours_trainable)))]


def asha_rows(ad: Any) -> list[tuple[str, ...]]:
    if not isinstance(ad, dict):
        return [("asha_epoch_fraction", ad, "", "", str(ASHA), "-")]
    diff = ad["best_minus_random_best"]
    verdict = "within noise" if ad["difference_within_noise"] else ("better" if diff > 0 else "worse")
    return [("asha_epoch_fraction: epochs TPE+ASHA vs random", str(ad["asha"]["epochs_used"]),
             str(ad["random"]["epochs_used"]), num(ad["epoch_fraction"], ".3f"), str(ASHA),
             met(ASHA.met(ad["epoch_fraction"]))),
            ("asha_best_minus_random_best: best val top-1 (pp)", num(ad["asha"]["best_val_top1"], ".1f"),
             num(ad["random"]["best_val_top1"], ".1f"), num(diff, "+.1f"), f"noise ±{ad['noise_pp']:.1f}", verdict)]


def gpu_rows(gpu: Any, packing: Any) -> list[tuple[str, ...]]:
    if not isinstance(gpu, dict):
        return [("gpu_images_per_s / packing_speedup", gpu, "", "", "", "-")]
    rows = [(f"gpu_images_per_s: {model}", num(rate, ".0f"), "", "", "", "-")
            for model, rate in gpu["images_per_s"].items()]
    rows += [(f"packing_speedup: {k} trials/GPU", num(packing["aggregate_images_per_s"][k], ".0f"), "",
              num(speedup, ".2f"), "", "-") for k, speedup in packing["speedup"].items()]
    return rows


def print_trainable_detail(tb: dict[str, Any], console) -> None:
    ray_trial = ""
    if "ray_trial_images_per_s" in tb:
        ray_trial = (f"; Ray trial: epochs in lockstep with bare epochs, per-epoch ratio "
                     f"{tb['ray_trial_ratio_min']:.3f}-{tb['ray_trial_ratio_max']:.3f}; counted whole (train + "
                     f"validation + checkpoint + report) {tb['ray_trial_end_to_end_images_per_s']:.1f} images/s "
                     f"(validation {tb['ray_trial_validation_s']:.3f} s, checkpoint + report "
                     f"{tb['ray_trial_checkpoint_and_report_s']:.3f} s per epoch); "
                     f"Tune driver busy {100 * tb['ray_driver_cpu_share']:.0f} % of a core")
    console.print(f"trainable_vs_bare: {tb['model']}, {tb['images']} images, batch {tb['batch_size']}, "
                  f"{tb['torch_threads']} torch thread(s), {tb['timed_epochs']} interleaved epochs; per-epoch "
                  f"ratio {tb['ratio_min']:.3f}-{tb['ratio_max']:.3f}" + ray_trial)


def print_augment_detail(av: dict[str, Any], console) -> None:
    b = av["breakdown_us_per_batch"]
    console.print(f"augment, µs per batch of {av['batch_size']} on {av['torch_threads']} thread(s): BatchAugment "
                  f"{b['batch_augment_call']:.0f} = random_crop_flip {b['random_crop_flip']:.0f} + normalize "
                  f"{b['normalize']:.0f} (crop alone {b['random_crop']:.0f}, as a 4-D indexing gather "
                  f"{b['crop_4d_indexing_before']:.0f}; a separate flip {b['random_hflip']:.0f}); batch gather "
                  f"index_select {b['batch_gather_index_select']:.0f} vs train_x\\[idx] "
                  f"{b['batch_gather_advanced_indexing']:.0f}")


def print_overhead_detail(po: dict[str, Any], console) -> None:
    from rich.table import Table

    detail = Table(title=f"Per-trial overhead: {po['trials']} trials, {po['concurrency']} at a time")
    for col in ("sweep", "wall s", "ideal s", "work/trial s", "overhead/trial s", "processes"):
        detail.add_column(col, justify="left" if col == "sweep" else "right")
    for col in ("first trial starts s", "between trials s"):
        detail.add_column(col, justify="right")
    for key in ("naive_defaults", "ours_trivial", "ours_trainable"):
        row = po[key]
        detail.add_row(key, num(row["wall_s"], ".1f"), num(row["ideal_s"], ".1f"), num(row["mean_work_s"], ".2f"),
                       num(row["per_trial_s"], ".2f"), str(row.get("worker_processes", "-")),
                       num(row.get("first_trial_start_s", "-"), ".2f"),
                       num(row.get("turnaround_same_process_s", "-"), ".3f"))
    console.print(detail)
    b = po["breakdown"]
    imports = ""
    if b["import_torch_s"] is not None:
        imports = (f"python start {b['python_start_s']:.2f} s, import torch {b['import_torch_s']:.2f} s, import "
                   f"torch+timm+trainables+ray.tune {b['import_trainable_stack_s']:.2f} s (fresh processes), ")
    console.print(
        f"where it goes: {imports}Ray actor start {b['ray_actor_start_s']:.2f} s (+ import torch in it "
        f"{b['import_torch_in_actor_s']:.2f} s); tune.report {1000 * b['tune_report_s']:.0f} ms, checkpoint "
        f"save {1000 * b['checkpoint_save_s']:.0f} ms + report with checkpoint "
        f"{1000 * b['tune_report_with_checkpoint_s']:.0f} ms per epoch; our trainable's setup inside the trial "
        f"{po['ours_trainable']['in_trial_setup_s']:.2f} s")


def print_asha_detail(ad: dict[str, Any], console) -> None:
    from rich.table import Table

    detail = Table(title=f"TPE+ASHA vs random: {ad['space']}, {ad['trials']} trials x {ad['max_epochs']} epochs")
    for col in ("search", "epochs", "stopped early", "wall s", "best val top-1", "top-3", "top-3 std",
                "winner over seeds", "binomial SE"):
        detail.add_column(col, justify="left" if col == "search" else "right")
    for kind in ("asha", "random"):
        r = ad[kind]
        detail.add_row(kind, str(r["epochs_used"]), str(r["trials_stopped_early"]), num(r["wall_s"], ".1f"),
                       num(r["best_val_top1"], ".1f"), ", ".join(f"{v:.1f}" for v in r["top3_val_top1"]),
                       num(r["top3_std"], ".1f"), f"{r['winner_seed_mean']:.1f} ± {r['winner_seed_std']:.1f}",
                       num(r["binomial_se"], ".1f"))
    console.print(detail)
    console.print(f"noise judged by: {ad['noise_judged_by']} = ±{ad['noise_pp']:.1f} pp; difference of the "
                  f"winners' seed means {ad['winner_seed_mean_difference']:+.1f} pp")
    sim = ad["expected_epoch_fraction"]
    if isinstance(sim, dict):
        console.print(f"Ray's async-ASHA rungs on {sim['sweeps']} synthetic sweeps of this size "
                      f"(grace {ad['asha_settings']['grace_period']}, reduction "
                      f"{ad['asha_settings']['reduction_factor']}): epoch fraction {sim['mean']:.2f} on average, "
                      f"{sim['p10']:.2f}-{sim['p90']:.2f} (10th-90th percentile)")


def data_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """The image-folder figures: decode speed, data-ready time, driver memory slope, node memory."""
    fd, dr, dm, nm = (result.get(k, "not measured") for k in ("folder_decode", "data_ready", "driver_memory",
                                                               "node_memory"))
    rows = []
    if isinstance(fd, dict):
        rows.append((f"folder_decode: images/s at {fd['image_size']} px, {fd['workers']} workers vs torchvision",
                     num(fd["ours_images_per_s"], ".0f"), num(fd["torchvision_images_per_s"], ".0f"),
                     num(fd["ratio"], ".2f"), "", "-"))
    else:
        rows.append(("folder_decode", str(fd), "", "", "", "-"))
    if isinstance(dr, dict):
        rows.append(("data_ready: second sweep vs first, s", num(dr["second_s"], ".2f"), num(dr["first_s"], ".2f"),
                     num(dr["ratio"], ".3f"), "", "-"))
    if isinstance(dm, dict):
        rows.append(("driver_rss_per_decoded_byte at the largest folder (vs previous loader)",
                     num(dm["ours_growth_at_largest"], ".3f"), num(dm["previous_growth_at_largest"], ".2f"),
                     num(dm["ours_growth_at_largest"] / dm["previous_growth_at_largest"], ".3f"), str(DRIVER_RSS),
                     met(DRIVER_RSS.met(dm["ours_growth_at_largest"]))))
        rows.append(("  slope of peak driver RSS over decoded bytes", num(dm["ours_slope"], ".3f"),
                     num(dm["previous_slope"], ".2f"), "", "", "-"))
    if isinstance(nm, dict):
        for k in (str(t) for t in nm["trials"]):
            rows.append((f"node_memory: {k} trial(s), MiB (sum of PSS) vs own copies", num(
                nm["ours"][k]["pss_bytes"] / MIB, ".0f"), num(nm["own_copies"][k]["pss_bytes"] / MIB, ".0f"),
                num(nm["ours"][k]["pss_bytes"] / nm["own_copies"][k]["pss_bytes"], ".2f"), "", "-"))
    return rows


def print_data_detail(result: dict[str, Any], console) -> None:
    fd, dr, dm, nm = (result.get(k) for k in ("folder_decode", "data_ready", "driver_memory", "node_memory"))
    if isinstance(fd, dict):
        console.print(f"folder_decode: {fd['images']} JPEGs (500x375) to uint8 {fd['image_size']} px: ours "
                      f"{fd['ours_decode_s']:.1f} s decoding, {fd['ours_end_to_end_s']:.1f} s end to end "
                      f"({fd['ours_end_to_end_images_per_s']:.0f} images/s: listing, decoding, writing and flushing "
                      f"the cache, {fd['ours_flush_s']:.1f} s of it the flush); torchvision ImageFolder + "
                      f"DataLoader({fd['workers']} workers) {fd['torchvision_s']:.1f} s")
    if isinstance(dr, dict):
        console.print(f"data_ready: {dr['images']} images, {dr['decoded_bytes'] / MIB:.0f} MiB decoded: first sweep "
                      f"{dr['first_s']:.2f} s (decoding), second {dr['second_s']:.3f} s (listing + memory-map)")
    if isinstance(dm, dict):
        points = ", ".join(f"{o['images']} images: {o['growth_per_decoded_byte']:.3f}x vs "
                           f"{p['growth_per_decoded_byte']:.2f}x"
                           for o, p in zip(dm["points"]["ours"], dm["points"]["previous"]))
        console.print(f"driver_memory (peak RSS beyond the libraries / decoded training bytes, ours vs previous "
                      f"loader): {points}")
    if isinstance(nm, dict):
        console.print(f"node_memory: decoded train+val {nm['decoded_train_val_bytes'] / MIB:.0f} MiB, pickled for "
                      f"each trial in {nm['pickled_bytes']} bytes; each extra trial adds "
                      f"{nm['ours_bytes_per_extra_trial'] / MIB:.0f} MiB (memory-mapped) vs "
                      f"{nm['own_copies_bytes_per_extra_trial'] / MIB:.0f} MiB (own copy)")
