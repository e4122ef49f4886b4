"""10. How repeatable a footprint's cost measurement is, and what it costs: tuner.costs.measure_footprint (the
very function a multi-objective sweep runs before any trial) repeated on one footprint, each time afresh (no
cache), in this process, with the sweep's default settings (eager, 1 thread)."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.common import Settings


def bench_cost_repeatability(settings: Settings) -> dict[str, Any]:
    from tuner.costs import CostSettings, measure_footprint

    how = CostSettings(batch=settings.cost_batch)
    config = {"model": settings.cost_model, "width": settings.cost_width, "image_size": settings.cost_size}
    runs = [measure_footprint(config, 10, settings.cost_size, how) for _ in range(settings.cost_repeats)]
    latency = [r["latency_ms"] for r in runs]
    throughput = [r["images_per_s"] for r in runs]
    median = statistics.median(latency)
    return {
        "footprint": f"{settings.cost_model}, width {settings.cost_width:g}, {settings.cost_size} px",
        "settings": {"runtime": how.runtime, "device": how.device, "threads": how.threads, "batch": how.batch,
                     "rounds": how.rounds, "iterations": how.iterations},
        "repeats": len(runs),
        "latency_ms": latency, "latency_median_ms": median,
        # the spread across whole measurements: what a sweep measuring this footprint again could see
        "latency_spread_pct": (max(latency) - min(latency)) / median * 100,
        "latency_cv_pct": statistics.pstdev(latency) / statistics.fmean(latency) * 100,
        # the spread within one measurement (its rounds), as a sweep records it
        "within_measurement_spread_pct": statistics.median(r["latency_spread_pct"] for r in runs),
        "images_per_s": throughput,
        "images_per_s_spread_pct": (max(throughput) - min(throughput)) / statistics.median(throughput) * 100,
        "params_m": runs[0]["params_m"], "model_mb": runs[0]["model_mb"],
        "measure_s_per_footprint": statistics.median(r["measure_s"] for r in runs),
    }


def cost_rows(cr: Any) -> list[tuple[str, ...]]:
    if not isinstance(cr, dict):
        return [("cost_repeatability", str(cr), "", "", "", "-")]
    return [(f"cost_repeatability: latency spread (max-min)/median over {cr['repeats']} measurements of "
             f"{cr['footprint']}, %", f"{cr['latency_spread_pct']:.1f}", "", "", "", "-"),
            ("  seconds to measure one footprint (latency, throughput, memory)",
             f"{cr['measure_s_per_footprint']:.2f}", "", "", "", "-")]


def print_cost_detail(cr: Any, console) -> None:
    if not isinstance(cr, dict):
        return
    s = cr["settings"]
    console.print(f"cost_repeatability: {cr['footprint']} ({s['runtime']} on {s['device']}, {s['threads']} thread, "
                  f"batch 1 and {s['batch']}, {s['rounds']} rounds each): latency "
                  f"{', '.join(f'{v:.3f}' for v in cr['latency_ms'])} ms, median {cr['latency_median_ms']:.3f} ms, "
                  f"spread {cr['latency_spread_pct']:.1f} % (CV {cr['latency_cv_pct']:.1f} %; within one "
                  f"measurement {cr['within_measurement_spread_pct']:.1f} %); images/s spread "
                  f"{cr['images_per_s_spread_pct']:.1f} %; {cr['measure_s_per_footprint']:.2f} s per footprint")
