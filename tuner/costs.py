"""What each distinct footprint of a space costs to deploy, measured before any trial trains.

A config's inference cost depends on its architecture and input size (the ARCHITECTURE-tagged keys and
image_size), not on its training, so it is measured once per footprint, on the device and runtime that matter
(`--cost-device`, `--cost-runtime`, `--cost-threads`), with random weights:

- params_m: parameters (millions); model_mb: the state dict's bytes (MiB)
- latency_ms: median time per call at batch 1; images_per_s: --cost-batch / median time per call at that batch
- peak_mem_mb: the weights plus the working memory of one call at --cost-batch (CPU: the process's peak resident
  memory over its resident memory before the call; CUDA: torch's peak allocation)

Each timing is COST_ROUNDS rounds of time_calls (tuner.export's: warm-up calls, then timed ones); the figure is
the median of every timed call, and `latency_spread_pct` the range of the rounds' medians over that median: how
repeatable the measurement is. Results are cached by footprint + runtime + device + threads + batch (+ torch and
the CPU or GPU model) in the data cache folder (cost-probes.json, next to packing's memory-probes.json), and a
sweep keeps its own copy (costs.json in its folder), so --resume and --add-trials see the very figures it started
with.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from trainables.config import ARCHITECTURE, TrialConfig
from trainables.errors import UserError, error_line
from tuner.objectives import COSTS, RUNTIMES, Constraint, column, violations

COST_KEYS = TrialConfig.tagged(ARCHITECTURE)  # model, width, vit_*, image_size: what sets inference cost
MAX_FOOTPRINTS = 64
COST_ROUNDS = 5
CACHE_FILE = "cost-probes.json"
MIB = 2 ** 20
COST_TIMEOUT_S = 600  # the wait for the measuring task, plus this per footprint (see measure_remote)
COST_TIMEOUT_PER_FOOTPRINT_S = 600


@dataclass(frozen=True)
class CostSettings:
    """How costs are measured (the --cost-* flags)."""

    runtime: str = "eager"
    device: str = "cpu"
    threads: int = 1
    batch: int = 64
    rounds: int = COST_ROUNDS
    iterations: int = 10  # timed calls per round at batch 1 (a fifth of it, at least 3, at --cost-batch)

    def describe(self) -> str:
        return (f"{self.runtime} on {self.device}" + (f", {self.threads} thread(s)" if self.device == "cpu" else "")
                + f", batch 1 and {self.batch}")


@dataclass(frozen=True)
class CostBook:
    """Every footprint's costs and the sweep's constraints: what a trial looks itself up in (it travels to the
    trials with the trainable) and what the driver checks before any trial starts."""

    costs: dict[str, dict[str, float]]  # footprint key -> {metric: value, ...}
    constraints: tuple[Constraint, ...] = ()
    image_size: int = 32  # the data set's, for configs that do not set image_size
    described: dict[str, str] = field(default_factory=dict)  # footprint key -> "resnet18, width 0.25, 16 px"

    def of(self, config: dict[str, Any]) -> dict[str, float]:
        """The config's cost metrics as result keys (cost_latency_ms, ...); KeyError for an unmeasured footprint."""
        measured = self.costs[footprint_key(config, self.image_size)]
        return {column(m): float(measured[m]) for m in COSTS if m in measured}

    def hard_violations(self, config_or_costs: dict[str, Any]) -> list[float]:
        """Violations of the constraints known before training (on costs) for a config or its cost metrics."""
        values = config_or_costs if any(k.startswith("cost_") for k in config_or_costs) else self.of(config_or_costs)
        return violations(values, [c for c in self.constraints if c.known_before_training], key=column)

    def trainable(self, config: dict[str, Any]) -> bool:
        return all(v <= 0 for v in self.hard_violations(config))


def footprint_key(config: dict[str, Any], image_size: int) -> str:
    """The footprint of a config: its architecture keys (defaults filled in; a shape knob its model is not built
    with left out, so two configs of one model are one footprint) and the size the model sees."""
    from tuner.footprints import footprint_of

    cfg = TrialConfig.from_dict({k: v for k, v in config.items() if k in TrialConfig.keys()})
    size = cfg.image_size or image_size
    keys = tuple(k for k in COST_KEYS if k != "image_size")
    return " ".join(f"{k}={value}" for k, value in footprint_of(cfg.to_dict(), keys)) + f" size={size}"


def describe(config: dict[str, Any], image_size: int) -> str:
    """'resnet18, width 0.25, 16 px', 'vit_scratch, vit_dim 64, 16 px': the shape knobs the model is built with,
    where they differ from their defaults."""
    from trainables.models import SHAPE_KNOBS, shape_knobs

    cfg = TrialConfig.from_dict({k: v for k, v in config.items() if k in TrialConfig.keys()})
    shape = "".join(f", {k} {getattr(cfg, k):g}" for k in SHAPE_KNOBS
                    if k in shape_knobs(cfg.model) and getattr(cfg, k) != getattr(TrialConfig(), k))
    return f"{cfg.model}{shape}, {cfg.image_size or image_size} px"


def cost_configs(spec) -> list[dict[str, Any]]:
    """One config per distinct footprint the space can sample (packing's enumeration over the architecture keys).
    Costs are looked up by footprint, so those keys must be choices (or fixed): a range has no finite set."""
    from ray.tune.search.sample import Categorical, Domain

    from tuner.packing import memory_configs

    ranged = [k for k, v in spec.param_space().items() if k in COST_KEYS and isinstance(v, Domain)
              and not isinstance(v, Categorical)]
    if ranged:
        raise UserError(f"--objective/--constraint on costs: {', '.join(ranged)} is searched over a range; costs are "
                        f"measured per footprint before the sweep, so make it a choice, e.g. {ranged[0]}: "
                        f"{{choice: [...]}}")
    configs = memory_configs(spec, most=MAX_FOOTPRINTS + 1, keys=COST_KEYS)
    if len(configs) > MAX_FOOTPRINTS:
        raise UserError(f"the space samples more than {MAX_FOOTPRINTS} footprints (model x width x image size ...); "
                        f"costs are measured for each before the sweep: narrow the architecture choices")
    return configs


def measure_footprint(config: dict[str, Any], num_classes: int, image_size: int,
                      settings: CostSettings) -> dict[str, Any]:
    """One footprint's costs in this process (see the module's docstring)."""
    import torch

    from trainables.classify import build_model

    started = time.perf_counter()
    if settings.device == "cpu":
        torch.set_num_threads(settings.threads)
    cfg = TrialConfig.from_dict({**{k: v for k, v in config.items() if k in TrialConfig.keys()}, "pretrained": "",
                                 "compile": False})
    size = cfg.image_size or image_size
    device = torch.device(settings.device)
    model = build_model(cfg, num_classes, device, size, load_weights=False).eval()
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    fn = runtime_callable(model, settings, size)
    sync = torch.cuda.synchronize if settings.device == "cuda" else (lambda: None)
    one = torch.rand(1, 3, size, size, device=device)
    many = torch.rand(settings.batch, 3, size, size, device=device)
    with torch.inference_mode():
        latency = _rounds(lambda: fn(one), settings.iterations, settings, sync)
        batched = _rounds(lambda: fn(many), max(3, settings.iterations // 5), settings, sync)
        peak = _peak_bytes(lambda: fn(many), settings.device, sync)
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "model_mb": state_bytes / MIB,
            "latency_ms": latency["median"] * 1000, "latency_spread_pct": latency["spread_pct"],
            "images_per_s": settings.batch / batched["median"], "images_per_s_spread_pct": batched["spread_pct"],
            "peak_mem_mb": (state_bytes + peak) / MIB if peak >= 0 else math.nan,
            "latency_rounds_ms": [m * 1000 for m in latency["rounds"]], "timed_calls": latency["calls"],
            "measure_s": time.perf_counter() - started}


def runtime_callable(model, settings: CostSettings, size: int):
    """Images -> logits through the chosen runtime: tuner.export's runtime builders (eager needs none)."""
    import torch

    from tuner.export import build_runtimes, export_onnx

    if settings.runtime == "eager":
        return model
    example = torch.rand(2, 3, size, size, device=settings.device)
    onnx_file = None
    if settings.runtime == "onnxruntime":
        onnx_file = Path(tempfile.mkdtemp(prefix="cost-")) / "model.onnx"
        failure = export_onnx(model.cpu(), example.cpu(), onnx_file)
        model.to(settings.device)
        if failure:
            raise RuntimeError(f"ONNX export failed: {failure}")
    runtimes, reasons, _ = build_runtimes(model, example[:1], settings.device, settings.runtime == "compile",
                                          onnx_file)
    name = RUNTIMES[settings.runtime]
    if name not in runtimes:
        raise RuntimeError(f"runtime {settings.runtime} cannot run it: {reasons.get(name, 'unavailable')}")
    return runtimes[name]


def _rounds(fn, iterations: int, settings: CostSettings, sync) -> dict[str, Any]:
    from tuner.export import time_calls

    rounds, calls = [], []
    for i in range(settings.rounds):
        times = time_calls(fn, iterations=iterations, warmup=3 if i == 0 else 1, budget_s=1.0, sync=sync)
        rounds.append(statistics.median(times))
        calls += times
    median = statistics.median(calls)
    return {"median": median, "rounds": rounds, "calls": len(calls),
            "spread_pct": (max(rounds) - min(rounds)) / median * 100 if median > 0 else math.nan}


def _peak_bytes(fn, device: str, sync) -> int:
    """Working memory of one call beyond what is held before it; -1 where it cannot be read."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        sync()
        return int(torch.cuda.max_memory_allocated() - before)
    from tuner.packing import process_memory

    try:  # writing 5 to clear_refs resets the peak resident memory (VmHWM) of this process (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return -1
    before = process_memory()["VmRSS"]
    fn()
    return max(0, process_memory()["VmHWM"] - before)


def measure_footprints(configs: list[dict[str, Any]], num_classes: int, image_size: int,
                       settings: CostSettings) -> list[dict[str, Any]]:
    """measure_footprint for each config in turn (one at a time: side by side they would slow each other)."""
    out = []
    for config in configs:
        try:
            out.append(measure_footprint(config, num_classes, image_size, settings))
        except Exception as exc:  # noqa: BLE001 - a runtime that cannot run this model: one line, said by the driver
            out.append({"error": error_line(exc, 240)})
    return out


def cache_key(config: dict[str, Any], num_classes: int, image_size: int, settings: CostSettings) -> str:
    import platform

    import torch

    from tuner.packing import cpu_model

    hardware = torch.cuda.get_device_name(0) if settings.device == "cuda" and torch.cuda.is_available() else \
        f"{platform.machine()} {cpu_model()}"
    what = (f"cost 1 {footprint_key(config, image_size)} classes={num_classes} {settings.runtime} {settings.device} "
            f"threads={settings.threads} batch={settings.batch} torch={torch.__version__} {hardware}")
    return hashlib.sha256(what.encode()).hexdigest()[:20]


def load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def save_json(path: Path, data: dict[str, Any]) -> None:
    """Written aside and renamed; a read-only folder only means measuring again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass


def cache_path() -> Path:
    from trainables.cache import cache_root

    return cache_root() / CACHE_FILE


def measure_cached(configs: list[dict[str, Any]], num_classes: int, image_size: int, settings: CostSettings,
                   remote: bool = True) -> list[dict[str, Any]]:
    """Each config's costs, from the cache where measured before, else measured now, in one fresh Ray worker on
    the chosen device (`remote`; else in this process), and cached. Each result has `cached`: bool."""
    known = load_json(cache_path())
    keys = [cache_key(c, num_classes, image_size, settings) for c in configs]
    todo = [(c, k) for c, k in zip(configs, keys) if k not in known]
    if todo:
        todo_configs = [c for c, _ in todo]
        if remote:
            measured = measure_remote(todo_configs, num_classes, image_size, settings)
        else:
            measured = measure_footprints(todo_configs, num_classes, image_size, settings)
        fresh = {k: m for (_, k), m in zip(todo, measured)}
        known.update(fresh)
        save_json(cache_path(), {**load_json(cache_path()), **{k: m for k, m in fresh.items() if "error" not in m}})
    measured_now = {k for _, k in todo}
    return [{**known[k], "cached": k not in measured_now} for k in keys]


def check_cost_resources(settings: CostSettings, nodes: Sequence[dict[str, float]]) -> None:
    """The measuring task must fit one live node (`nodes`: each one's Ray resources), else Ray leaves it pending
    and the sweep waits forever: one error line instead."""
    max_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    if settings.device == "cuda" and not any(n.get("GPU", 0) >= 1 and n.get("CPU", 0) >= 1 for n in nodes):
        raise UserError("--cost-device cuda: the Ray cluster has no GPU to measure costs on; use "
                        "--cost-device cpu, or join a cluster with one (--address)")
    if settings.device == "cpu" and settings.threads > max_cpus:
        raise UserError(f"--cost-threads {settings.threads} but the Ray cluster's largest node has {max_cpus:g} "
                        f"CPU(s); pass --cost-threads {max(1, int(max_cpus))} or less, or join a cluster with a "
                        f"bigger node (--address)")


def measure_remote(configs: list[dict[str, Any]], num_classes: int, image_size: int,
                   settings: CostSettings) -> list[dict[str, Any]]:
    """measure_footprints in one fresh Ray worker holding --cost-threads CPUs (or a GPU), waited for at most
    COST_TIMEOUT_S plus COST_TIMEOUT_PER_FOOTPRINT_S per config (generous: a big net at batch 64 on CPU takes
    minutes), so a task the cluster never schedules (its CPUs held by other work) is an error, not a hang."""
    import ray
    from ray.exceptions import GetTimeoutError

    check_cost_resources(settings, [n["Resources"] for n in ray.nodes() if n.get("Alive")])
    task = ray.remote(num_cpus=settings.threads if settings.device == "cpu" else 1,
                      num_gpus=1 if settings.device == "cuda" else 0, max_calls=1,
                      max_retries=0)(measure_footprints)
    ref = task.remote(configs, num_classes, image_size, settings)
    timeout = COST_TIMEOUT_S + COST_TIMEOUT_PER_FOOTPRINT_S * len(configs)
    try:
        return ray.get(ref, timeout=timeout)
    except GetTimeoutError:
        ray.cancel(ref, force=True)
        wanted = f"{settings.threads} CPU(s)" if settings.device == "cpu" else "a GPU"
        raise UserError(f"costs: measuring {len(configs)} footprint(s) ({settings.describe()}) did not finish in "
                        f"{timeout:.0f} s; the Ray task may have waited for {wanted} held by other work: try again "
                        f"when the cluster is idle, or lower --cost-threads / --cost-batch") from None


def check_feasible(book: CostBook) -> None:
    """A constraint no footprint can meet is one error line now, naming the cheapest footprint's cost."""
    hard = [c for c in book.constraints if c.known_before_training]
    if not hard or any(all(v <= 0 for v in book.hard_violations({column(m): c[m] for m in COSTS if m in c}))
                       for c in book.costs.values()):
        return

    def badness(key: str) -> float:
        values = book.costs[key]
        return sum(max(0.0, c.violation(values.get(c.metric, math.nan))) / max(abs(c.bound), 1e-9) for c in hard)

    cheapest = min(book.costs, key=badness)
    figures = ", ".join(f"{c.metric} {book.costs[cheapest][c.metric]:.3g}" for c in hard)
    raise UserError(f"no footprint the space samples meets {' and '.join(map(str, hard))}: the cheapest, "
                    f"{book.described.get(cheapest, cheapest)}, measures {figures} ({len(book.costs)} footprint(s) "
                    f"measured); relax the constraint or add smaller models, widths or image sizes")


def resolve_costs(spec, num_classes: int, image_size: int, console, recorded: dict[str, Any] | None = None,
                  remote: bool = True) -> CostBook:
    """The sweep's CostBook: its recorded costs (costs.json of a resumed or grown sweep) for the footprints they
    cover, the rest measured (or cached). Checks that the device exists and that some footprint is feasible."""
    from tuner.objectives import parse_constraints

    settings = cost_settings(spec)
    configs = cost_configs(spec)
    recorded = (recorded or {}).get("costs", {})
    keys = [footprint_key(c, image_size) for c in configs]
    missing = [c for c, k in zip(configs, keys) if k not in recorded]
    started = time.perf_counter()
    measured = measure_cached(missing, num_classes, image_size, settings, remote) if missing else []
    failed = [(c, m) for c, m in zip(missing, measured) if "error" in m]
    if failed:
        config, result = failed[0]
        raise UserError(f"costs: measuring {describe(config, image_size)} ({settings.describe()}) failed: "
                        f"{result['error']}")
    costs = {**{k: recorded[k] for k in keys if k in recorded},
             **{footprint_key(c, image_size): {k: v for k, v in m.items() if k != "cached"}
                for c, m in zip(missing, measured)}}
    book = CostBook(costs, parse_constraints(spec.constraints), image_size,
                    {k: describe(c, image_size) for c, k in zip(configs, keys)})
    check_feasible(book)
    ok = sum(book.trainable(c) for c in configs)
    reused = len(configs) - len(missing) + sum(bool(m.get("cached")) for m in measured)
    console.print(f"costs: {len(configs)} footprint(s) ({settings.describe()}; {reused} known from before, "
                  f"{time.perf_counter() - started:.1f} s); {ok} can be trained"
                  + (f", {len(configs) - ok} break {', '.join(str(c) for c in book.constraints if c.known_before_training)}"
                     f" and are never trained" if ok < len(configs) else ""), soft_wrap=True)
    return book


def cost_settings(spec) -> CostSettings:
    return CostSettings(spec.cost_runtime, spec.cost_device, spec.cost_threads, spec.cost_batch)
