"""Rows, the JSON, the Markdown table and the exit code of `make gpu-check` (no torch: the supervisor writes them).

A figure row: figure, measured value, baseline, ratio, target, met (yes / no / -), or, without a GPU, the value
"not measured: no GPU" (what the CPU form measured is kept in `cpu_value` / `cpu_baseline`, to prove the code ran).
A check row: check, outcome (passed / failed / skipped / error), detail.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

NOT_MEASURED_NO_GPU = "not measured: no GPU"
FAILED_OUTCOMES = ("failed", "error")


def figure_row(figure: str, value: float | None, baseline: float | str | None, *, ratio: float | None = None,
               target: Any = None, unit: str = "", baseline_is: str = "", measured: bool = True,
               note: str = "") -> dict[str, Any]:
    """One figure. `target` is a benchmarks.common.Target (or None: no target); ratio defaults to value/baseline.
    `measured=False` (the CPU form): the row says not measured, and keeps the CPU numbers apart."""
    if ratio is None and isinstance(value, (int, float)) and isinstance(baseline, (int, float)) and baseline:
        ratio = value / baseline
    row = {"figure": figure, "unit": unit, "baseline_is": baseline_is, "target": str(target) if target else "-",
           "note": note}
    if not measured:
        return {**row, "value": NOT_MEASURED_NO_GPU, "baseline": "", "ratio": None, "met": "-",
                "cpu_value": value, "cpu_baseline": baseline, "cpu_ratio": ratio}
    met = "-" if target is None or ratio is None or not math.isfinite(ratio) else ("yes" if target.met(ratio) else "no")
    return {**row, "value": value, "baseline": baseline, "ratio": ratio, "met": met}


def missing_row(figure: str, why: str) -> dict[str, Any]:
    """A figure that has no value: cut by the time guard, failed, or skipped; `why` says which."""
    return {"figure": figure, "value": f"not measured: {why}", "baseline": "", "ratio": None, "target": "-",
            "met": "-", "unit": "", "baseline_is": "", "note": ""}


def check_row(check: str, outcome: str, detail: str = "", **extra: Any) -> dict[str, Any]:
    return {"check": check, "outcome": outcome, "detail": detail, **extra}


def collect_rows(sections: dict[str, dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """Every section's figure and check rows; a section that failed or was cut is one row saying so."""
    figures, checks = [], []
    for name, section in sections.items():
        result = section.get("result") or {}
        figures += result.get("figures", [])
        checks += result.get("checks", [])
        if section["status"] in ("error", "cut", "crashed"):
            why = f"{section['status']}: {section.get('error', '')}".strip(": ")
            if name == "pytest" or result.get("checks"):
                checks.append(check_row(f"section {name}", "error", why))
            elif not result.get("figures"):
                figures.append(missing_row(f"section {name}", why))
    return figures, checks


def failed_checks(checks: list[dict]) -> list[dict]:
    return [c for c in checks if c["outcome"] in FAILED_OUTCOMES]


def exit_code(report: dict[str, Any]) -> int:
    """1 when a correctness check failed (or could not finish); figures that miss their targets do not count."""
    return 1 if report["failed_checks"] else 0


def cell(value: Any, digits: int = 3) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: a header, the figures, the checks and the sections with their times."""
    m = report["machine"]
    lines = [f"# make gpu-check ({report['form']} form)", "",
             f"- Date: {report['started']}; total {report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget",
             f"- Device: {m.get('device_name', 'no GPU')}; Python {m.get('python', '?')}, torch {m.get('torch', '?')}, "
             f"torchvision {m.get('torchvision', '?')}, timm {m.get('timm', '?')}; "
             f"CUDA {m.get('cuda_version') or '-'}; {m.get('cpus_usable', '?')} CPUs",
             f"- Exit code {report['exit_code']}: {len(report['failed_checks'])} correctness check(s) failed", "",
             "## Figures", "", "| figure | measured | baseline | ratio | target | met |", "|---|---:|---:|---:|---|---|"]
    for r in report["figures"]:
        unit = f" {r['unit']}" if r.get("unit") and isinstance(r["value"], (int, float)) else ""
        base = cell(r["baseline"]) + (f" ({r['baseline_is']})" if r.get("baseline_is") and r["baseline"] != "" else "")
        note = f" ({r['note']})" if r.get("note") else ""
        lines.append(f"| {cell(r['figure'])} | {cell(r['value'])}{unit}{cell(note)} | {base} | {cell(r['ratio'])} "
                     f"| {cell(r['target'])} | {r['met']} |")
    lines += ["", "## Correctness checks", "", "| check | outcome | detail |", "|---|---|---|"]
    lines += [f"| {cell(c['check'])} | {c['outcome']} | {cell(c['detail'])} |" for c in report["checks"]]
    lines += ["", "## Sections", "", "| section | status | seconds | budget s | note |", "|---|---|---:|---:|---|"]
    for name, s in report["sections"].items():
        lines.append(f"| {name} | {s['status']} | {s.get('elapsed_s', 0):.1f} | {s.get('budget_s', 0):.0f} "
                     f"| {cell(s.get('error') or s.get('reason') or '')} |")
    return "\n".join(lines) + "\n"


def finite(value: Any) -> Any:
    """NaN and infinities as strings, so the JSON is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """gpu-check.json and gpu-check.md in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "gpu-check.json", out / "gpu-check.md"
    json_path.write_text(json.dumps(finite(report), indent=1, default=str, allow_nan=False) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path
