"""`python -m tuner.export STORAGE/NAME [--compile] [--batch 64]`: the sweep's winner exported and benchmarked.

    STORAGE/NAME/export/model.pt           TorchScript: scripted where the model allows, else traced
    STORAGE/NAME/export/model.onnx         ONNX (torch.onnx's dynamo exporter), batch dimension dynamic,
                                           checked against eager PyTorch with onnxruntime
    STORAGE/NAME/export/inference.parquet  one row per (device, runtime, batch): latency median / p90 in ms,
                                           images/s, max |logit difference| to eager, why a runtime did not run
    STORAGE/NAME/export/export.json        what was exported from which checkpoint, input shape, classes, checks
    STORAGE/NAME/export/inference.png      latency at batch 1 and throughput at batch N per runtime

Another trial than the winner (--trial ID, e.g. each member of a Pareto front) is exported to
STORAGE/NAME/export/<ID>/ with the same files, so exporting several never overwrites one another.

Every export takes float images in [0, 1] of shape (N, 3, S, S), S the model's `input_size` (the size its net was
trained on), and normalises them itself. Runtimes: eager PyTorch, TorchScript trace, TorchScript script,
torch.compile (with --compile: compiling takes a while on CPU), onnxruntime; on CPU, and on CUDA when present.
Everything is attached to the sweep's parent MLflow run under export/.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from trainables.classify import CHECKPOINT_FILE
from trainables.errors import UserError, error_line
from tuner import cli, folder
from tuner.folder import EXPORT_DIR, TRIALS_FILE, Sweep
from tuner.report import attach
from tuner.report.publish import quick_mlflow, tracking_uri_of

RUNTIMES = ("eager", "torchscript_trace", "torchscript_script", "torch_compile", "onnxruntime")
CHECK_IMAGES = 16  # images compared between each runtime and eager


@dataclass
class Measurement:
    device: str
    runtime: str
    batch: int
    status: str  # ok | failed | skipped
    latency_ms: float = math.nan  # median per call
    latency_p90_ms: float = math.nan
    images_per_s: float = math.nan
    iterations: int = 0
    max_abs_diff: float = math.nan  # logits against eager on the check batch
    same_top1: float = math.nan  # share of check images with eager's top-1 class
    reason: str = ""


def winner_checkpoint(sweep: Sweep, trial_id: str | None = None) -> tuple[str, str]:
    """(trial_id, checkpoint dir) of the sweep's winner (or of `trial_id`)."""
    wanted = trial_id or sweep.record.winner
    if not wanted:
        raise UserError(f"sweep {sweep.name} has no winner (no trial finished with a checkpoint, or the sweep was "
                        f"interrupted); pass --trial ID to export a trial of {TRIALS_FILE}")
    row = next((r for r in sweep.trials if r["trial_id"] == wanted), None)
    if row is None:
        raise UserError(f"trial {wanted} is not in {sweep.path / TRIALS_FILE}; known trials: "
                        f"{', '.join(str(r['trial_id']) for r in sweep.trials)}")
    checkpoint = row.get("checkpoint")
    if not checkpoint or not (Path(checkpoint) / CHECKPOINT_FILE).is_file():
        raise UserError(f"trial {wanted} has no checkpoint on disk ({checkpoint or 'none recorded'})")
    return str(wanted), str(checkpoint)


def export_dir(sweep: Sweep, trial_id: str) -> Path:
    """Where a trial's export goes: export/ for the winner, export/<trial_id>/ for any other trial."""
    out = sweep.path / EXPORT_DIR
    return out if trial_id == sweep.record.winner else out / trial_id


def torchscript_line(torchscript: dict[str, Any], out: Path) -> str:
    """One line on the TorchScript export: the file written, or why neither scripting nor tracing worked."""
    if torchscript["file"]:
        script = torchscript["script_unavailable"]
        return f"TorchScript ({torchscript['kind']}): {out / torchscript['file']}" + \
            (f"; script unavailable: {script}" if script else "")
    return (f"TorchScript: not exported (scripting failed: {torchscript['script_unavailable'] or 'unknown'}; "
            f"tracing failed: {torchscript['trace_unavailable'] or 'unknown'})")


def check_images(sweep: Sweep, size: int, count: int = CHECK_IMAGES):
    """Real validation images of the sweep's data set, resized to `size`; random ones when it cannot be read."""
    import torch

    from trainables.placement import host_tensor
    from tuner.predict import resize_to

    spec = sweep.spec
    try:
        from trainables.data import load_dataset

        splits = load_dataset(spec.dataset, spec.data_dir, image_size=spec.search_space.folder_image_size)
        images = host_tensor(splits.val_x[:count]).float() / 255.0
        source = f"{len(images)} validation images of {spec.dataset}"
    except Exception as exc:  # noqa: BLE001 - data not on this machine: the checks still run, on noise
        images = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(0))
        source = f"{count} random images ({spec.dataset} not readable here: {type(exc).__name__})"
    return resize_to(images, size).contiguous(), source


def time_calls(fn: Callable[[], Any], *, iterations: int, warmup: int, budget_s: float,
               sync: Callable[[], None]) -> list[float]:
    """Seconds per call: `warmup` untimed calls, then up to `iterations` timed ones (at least 3, within budget_s)."""
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < iterations and (len(times) < 3 or time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def _quiet():
    """Silence TorchScript's deprecation and tracer warnings and the exporters' progress prints."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def build_runtimes(model, example, device: str, with_compile: bool,
                   onnx_file: Path | None) -> tuple[dict[str, Callable], dict[str, str], dict[str, Any]]:
    """Callables image batch -> logits per runtime on `device`, reasons for those that cannot run, and the
    TorchScript modules made (for saving)."""
    import torch

    runtimes: dict[str, Callable] = {"eager": model}
    reasons: dict[str, str] = {}
    made: dict[str, Any] = {}
    try:
        with _quiet():
            made["trace"] = torch.jit.trace(model, example, check_trace=False)
        runtimes["torchscript_trace"] = made["trace"]
    except Exception as exc:  # noqa: BLE001 - data-dependent control flow and the like
        reasons["torchscript_trace"] = error_line(exc)
    try:
        with _quiet():
            made["script"] = torch.jit.script(model)
        runtimes["torchscript_script"] = made["script"]
    except Exception as exc:  # noqa: BLE001 - TorchScript rejects much of timm and torchvision
        reasons["torchscript_script"] = error_line(exc)
    if with_compile:
        try:
            compiled = torch.compile(model)
            with _quiet(), torch.inference_mode():
                compiled(example)  # compile now, so failures are reasons and compile time stays out of the timings
            runtimes["torch_compile"] = compiled
        except Exception as exc:  # noqa: BLE001 - e.g. no C++ compiler for inductor on CPU
            reasons["torch_compile"] = error_line(exc)
    else:
        reasons["torch_compile"] = "skipped: pass --compile (compiling is slow on CPU)"
    if onnx_file is None:
        reasons["onnxruntime"] = "no ONNX export"
    else:
        import onnxruntime as ort

        provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            reasons["onnxruntime"] = f"skipped: this onnxruntime has no {provider}"
        else:
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()  # the same CPU threads as PyTorch: a fair race
            session = ort.InferenceSession(str(onnx_file), options, providers=[provider])
            name = session.get_inputs()[0].name

            def run_onnx(images):
                out = session.run(None, {name: images.detach().cpu().numpy()})[0]
                return torch.from_numpy(out)

            runtimes["onnxruntime"] = run_onnx
    return runtimes, reasons, made


def export_onnx(model, example, path: Path) -> str | None:
    """ONNX through torch.onnx's dynamo exporter with a dynamic batch dimension; None, or why it failed."""
    import onnx
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    example2 = example[:2] if len(example) >= 2 else example.repeat(2, 1, 1, 1)  # batch 1 would be specialised
    try:
        with _quiet():
            torch.onnx.export(model, (example2,), str(path), dynamo=True, external_data=False,
                              input_names=["images"], output_names=["logits"], dynamic_shapes=({0: batch},))
        onnx.checker.check_model(str(path))
    except Exception as exc:  # noqa: BLE001 - an operator without an ONNX translation, etc.
        path.unlink(missing_ok=True)
        return error_line(exc)
    return None


def benchmark(runtimes: dict[str, Callable], reasons: dict[str, str], device: str, check, batch: int,
              iterations: int, budget_s: float) -> list[Measurement]:
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    check = check.to(device)
    big = check.repeat(math.ceil(batch / len(check)), 1, 1, 1)[:batch].contiguous()
    rows: list[Measurement] = []
    with torch.inference_mode():
        reference = runtimes["eager"](check).float().cpu()
        for runtime in RUNTIMES:
            if runtime not in runtimes:
                status = "skipped" if reasons.get(runtime, "").startswith("skipped") else "failed"
                rows += [Measurement(device, runtime, b, status, reason=reasons.get(runtime, "")) for b in (1, batch)]
                continue
            fn = runtimes[runtime]
            try:
                logits = fn(check).float().cpu()
                diff = float((logits - reference).abs().max())
                agree = float((logits.argmax(1) == reference.argmax(1)).float().mean())
                for b, images, n in ((1, check[:1], iterations), (batch, big, max(3, iterations // 5))):
                    times = time_calls(lambda: fn(images), iterations=n, warmup=3 if b == 1 else 1,
                                       budget_s=budget_s, sync=sync)
                    ms = sorted(t * 1000 for t in times)
                    rows.append(Measurement(device, runtime, b, "ok", statistics.median(ms),
                                            ms[min(len(ms) - 1, int(0.9 * len(ms)))], b / statistics.median(times),
                                            len(times), diff, agree))
            except Exception as exc:  # noqa: BLE001 - a runtime that fails on these shapes
                rows += [Measurement(device, runtime, b, "failed", reason=error_line(exc)) for b in (1, batch)
                         if not any(r.runtime == runtime and r.batch == b for r in rows)]
    return rows


def plot_inference(rows: list[Measurement], batch: int, path: Path) -> Path | None:
    from tuner.report.plotting import pyplot, save, width

    ok = [r for r in rows if r.status == "ok"]
    if not ok:
        return None
    plt = pyplot()
    labels = sorted({(r.device, r.runtime) for r in ok}, key=lambda k: (k[0], RUNTIMES.index(k[1])))
    shown = {"eager": "eager", "torchscript_trace": "TorchScript\ntrace", "torchscript_script": "TorchScript\nscript",
             "torch_compile": "torch.compile", "onnxruntime": "onnxruntime"}
    names = [f"{shown[rt]}\n({dev})" for dev, rt in labels]
    colours = [plt.get_cmap("tab10")(RUNTIMES.index(rt)) for _, rt in labels]
    pick = {(r.device, r.runtime, r.batch): r for r in ok}
    fig, (ax_l, ax_t) = plt.subplots(1, 2, figsize=(width(max(9.0, 1.9 * len(labels) + 2)), 4.2))
    latency = [pick[(d, rt, 1)].latency_ms if (d, rt, 1) in pick else 0 for d, rt in labels]
    throughput = [pick[(d, rt, batch)].images_per_s if (d, rt, batch) in pick else 0 for d, rt in labels]
    ax_l.bar(names, latency, color=colours)
    ax_t.bar(names, throughput, color=colours)
    for i, (lat, thr) in enumerate(zip(latency, throughput)):
        ax_l.text(i, lat, f"{lat:.2f}", ha="center", va="bottom", fontsize=8)
        ax_t.text(i, thr, f"{thr:,.0f}", ha="center", va="bottom", fontsize=8)
    ax_l.set(title="Latency at batch 1 (median)", ylabel="ms per call (lower is better)", xlabel="runtime")
    ax_t.set(title=f"Throughput at batch {batch}", ylabel="images/s (higher is better)", xlabel="runtime")
    for ax, values in ((ax_l, latency), (ax_t, throughput)):
        ax.set_ylim(0, max(values) * 1.18 + 1e-9)
        ax.grid(axis="x", visible=False)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return save(fig, path)


def write_rows(rows: list[Measurement], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("device", pa.string()), ("runtime", pa.string()), ("batch", pa.int64()),
                        ("status", pa.string()), ("latency_ms", pa.float64()), ("latency_p90_ms", pa.float64()),
                        ("images_per_s", pa.float64()), ("iterations", pa.int64()), ("max_abs_diff", pa.float64()),
                        ("same_top1", pa.float64()), ("reason", pa.string())])
    pq.write_table(pa.Table.from_pylist([asdict(r) for r in rows], schema=schema), path)
    return path


def print_table(rows: list[Measurement], batch: int, console) -> None:
    from rich.table import Table

    from rich import box

    table = Table(title=f"inference: latency at batch 1 (ms), throughput at batch {batch} (images/s)",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    # b1 ms: median per call at batch 1; max diff / top-1 =: logits against eager and agreement of its top-1
    for column in ("device", "runtime", "b1 ms", "b1 p90", f"b{batch} img/s", "max diff", "top-1 ="):
        table.add_column(column, justify="left" if column in ("device", "runtime") else "right", no_wrap=True)
    keys = sorted({(r.device, r.runtime) for r in rows}, key=lambda k: (k[0], RUNTIMES.index(k[1])))
    by = {(r.device, r.runtime, r.batch): r for r in rows}
    notes: list[str] = []
    for device, runtime in keys:
        one, many = by.get((device, runtime, 1)), by.get((device, runtime, batch))
        if one is None or one.status != "ok":
            table.add_row(device, runtime, *[""] * 4, one.status if one else "")
            notes.append(f"{device} {runtime}: {one.reason if one else 'not measured'}")
            continue
        table.add_row(device, runtime, f"{one.latency_ms:.3f}", f"{one.latency_p90_ms:.3f}",
                      f"{many.images_per_s:,.0f}" if many and many.status == "ok" else "",
                      f"{one.max_abs_diff:.1e}", f"{one.same_top1:.0%}")
    console.print(table)
    for note in notes:
        console.print(f"  {note}", highlight=False, soft_wrap=True)


def run_export(sweep: Sweep, *, batch: int = 64, with_compile: bool = False, iterations: int = 50,
               budget_s: float = 3.0, trial_id: str | None = None, console=None) -> dict[str, Any]:
    import torch

    from trainables.classify import load_checkpoint_model

    trial, checkpoint = winner_checkpoint(sweep, trial_id)
    model, cfg = load_checkpoint_model(checkpoint, "cpu")
    size = int(getattr(model, "input_size", None) or cfg.image_size or 32)
    out = export_dir(sweep, trial)
    out.mkdir(parents=True, exist_ok=True)
    check, source = check_images(sweep, size)
    example = check[:1]

    onnx_file = out / "model.onnx"
    onnx_error = export_onnx(model, check, onnx_file)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows: list[Measurement] = []
    scripted_reason = traced_reason = ""
    saved_kind = None
    for device in devices:
        on_device = model.to(device).eval()
        runtimes, reasons, made = build_runtimes(on_device, example.to(device), device, with_compile,
                                                 None if onnx_error else onnx_file)
        if device == "cpu":
            scripted_reason = reasons.get("torchscript_script", "")
            traced_reason = reasons.get("torchscript_trace", "")
            kind = "script" if "script" in made else "trace" if "trace" in made else None
            if kind:  # scripted keeps the model's own resize branch, so it takes any image size
                made[kind].save(str(out / "model.pt"))
                saved_kind = kind
        rows += benchmark(runtimes, reasons, device, check, batch, iterations, budget_s)
    model.to("cpu")

    checks: dict[str, Any] = {}
    if saved_kind:
        with _quiet():
            loaded = torch.jit.load(str(out / "model.pt"), map_location="cpu")
        with torch.inference_mode():
            checks["torchscript_max_abs_diff"] = float((loaded(check) - model(check)).abs().max())
    if not onnx_error:
        onnx_rows = [r for r in rows if r.device == "cpu" and r.runtime == "onnxruntime" and r.status == "ok"]
        if onnx_rows:
            checks["onnx_max_abs_diff"] = onnx_rows[0].max_abs_diff
            checks["onnx_same_top1"] = onnx_rows[0].same_top1
    summary = {
        "sweep": sweep.name, "trial_id": trial, "checkpoint": checkpoint, "model": cfg.model,
        "input": {"shape": ["N", 3, size, size], "dtype": "float32", "range": [0.0, 1.0],
                  "note": "the model normalises itself; resize images to the input size first"},
        "classes": list(model.classes),
        "torchscript": {"file": "model.pt" if saved_kind else None, "kind": saved_kind,
                        "script_unavailable": scripted_reason or None,
                        "trace_unavailable": None if saved_kind else traced_reason or None},
        "onnx": {"file": None if onnx_error else "model.onnx", "error": onnx_error,
                 "exporter": "torch.onnx.export(dynamo=True)", "dynamic_batch": True},
        "checks": {**checks, "images": source},
        "benchmark": {"batch": batch, "devices": devices, "torch": torch.__version__,
                      "cpu_threads": torch.get_num_threads(), "compile": with_compile,
                      "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }
    write_rows(rows, out / "inference.parquet")
    (out / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
    figure = plot_inference(rows, batch, out / "inference.png")
    summary["files"] = [p for p in (out / "model.pt", out / "model.onnx", out / "inference.parquet",
                                    out / "export.json", figure) if p is not None and Path(p).is_file()]
    summary["rows"] = rows
    summary["dir"] = out
    return summary


def log_metrics(sweep: Sweep, summary: dict[str, Any], tracking_uri: str | None) -> None:
    """The ONNX check and the headline figures as metrics of the parent run (after attach() reached it)."""
    client = quick_mlflow(tracking_uri or tracking_uri_of(sweep))
    # another trial's figures go under its own names, so they never overwrite the winner's
    prefix = "" if summary["trial_id"] == sweep.record.winner else f"{summary['trial_id']}."
    metrics = {f"{prefix}export_{k}": v for k, v in summary["checks"].items()
               if isinstance(v, float) and math.isfinite(v)}
    for r in summary["rows"]:
        if r.status == "ok":
            key = f"{prefix}infer_{r.device}_{r.runtime}_b{r.batch}"
            metrics[f"{key}_ms" if r.batch == 1 else f"{key}_images_per_s"] = \
                r.latency_ms if r.batch == 1 else r.images_per_s
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    client.log_batch(sweep.record.parent_run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuner.export", description="Export a sweep's winner as TorchScript "
                                "and ONNX into STORAGE/NAME/export/, benchmark inference, attach it all to MLflow.")
    p.add_argument("sweep_dir", metavar="STORAGE/NAME", help="the sweep folder (holds sweep.json, trials.parquet)")
    p.add_argument("--batch", type=int, default=64, help="batch size of the throughput benchmark (default 64)")
    p.add_argument("--compile", action="store_true", help="also benchmark torch.compile (slow to compile on CPU)")
    p.add_argument("--iterations", type=int, default=50, help="timed calls at batch 1 (a fifth of it at --batch)")
    p.add_argument("--budget", type=float, default=3.0, help="at most about this many seconds per measurement")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: PyTorch's own choice)")
    p.add_argument("--trial", help="export this trial instead of the winner (into export/TRIAL/)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: the one recorded in sweep.json)")
    p.add_argument("--no-mlflow", action="store_true", help="attach nothing to MLflow")
    return p


@cli.command
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console = cli.console()
    if args.batch < 1 or args.iterations < 1:
        raise UserError("--batch and --iterations must be positive integers")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be a positive integer")
        import torch

        torch.set_num_threads(args.threads)
    sweep = folder.load(args.sweep_dir)
    summary = run_export(sweep, batch=args.batch, with_compile=args.compile, iterations=args.iterations,
                         budget_s=args.budget, trial_id=args.trial, console=console)
    print_table(summary["rows"], args.batch, console)
    out = summary["dir"]
    ts, onnx_info, checks = summary["torchscript"], summary["onnx"], summary["checks"]
    print(f"trial {summary['trial_id']} ({summary['model']}), input float32 {tuple(summary['input']['shape'])} "
          f"in [0, 1]; checked on {checks['images']}")
    print(torchscript_line(ts, out))
    if onnx_info["file"]:
        print(f"ONNX: {out / onnx_info['file']}; onnxruntime vs eager max |diff| "
              f"{checks.get('onnx_max_abs_diff', math.nan):.2e}, same top-1 {checks.get('onnx_same_top1', 0):.0%}")
    else:
        print(f"ONNX export failed: {onnx_info['error']}")
    print(f"figures: {out / 'inference.parquet'}, {out / 'export.json'}")
    if not args.no_mlflow:
        artifacts = out.relative_to(sweep.path).as_posix()  # export/, or export/<trial> for another trial
        warning = attach(sweep, summary["files"], artifacts, args.mlflow_uri)
        if warning is None:
            try:
                log_metrics(sweep, summary, args.mlflow_uri)
            except Exception as exc:  # noqa: BLE001
                warning = f"could not log metrics to MLflow ({type(exc).__name__})"
        print(f"warning: {warning}; the exports are in {out}" if warning else
              f"attached to MLflow run {sweep.record.parent_run_id} under {artifacts}/")
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.exit_with(main)
