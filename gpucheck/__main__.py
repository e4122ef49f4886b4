"""`python -m gpucheck`: the supervisor of `make gpu-check`.

It runs the sections (gpucheck.sections) in a worker process and watches the events it writes: a section past its
own budget (plus a grace) or past the global budget is killed with its whole process group and reported as cut;
a worker that dies mid-section is reported as crashed; either way a fresh worker runs the sections left. Then it
writes gpu-check.json and gpu-check.md under --out (default $OUT/gpu-check when $OUT is set, else ./gpu-check)
and exits 1 only when a correctness check failed. It never imports torch itself, so it starts at once.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpucheck import report as rep
from gpucheck.sections import SECTIONS

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET_S = 460.0  # the whole command, within 8 minutes on one GPU
GRACE_S = 20.0  # a section still running this long past its own budget is killed
POLL_S = 0.2


def default_out() -> Path:
    return Path(os.environ["OUT"]) / "gpu-check" if os.environ.get("OUT") else Path("gpu-check")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gpucheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT/gpu-check, else gpu-check)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole command")
    p.add_argument("--only", metavar="NAME,...", help=f"run only these sections (of {', '.join(SECTIONS)})")
    p.add_argument("--cpu", action="store_true", help="the CPU form even where a GPU is (CUDA hidden)")
    p.add_argument("--section-budget", action="append", default=[], metavar="NAME=S",
                   help="override one section's own seconds (repeatable)")
    p.add_argument("--grace", type=float, default=GRACE_S,
                   help=f"seconds a section may run past its budget before it is killed (default {GRACE_S:g})")
    return p


@dataclass
class Watch:
    """What the supervisor knows: each section's outcome, the section running now, the events read so far."""

    events: Path
    deadline: float  # time.time() of the global deadline
    grace: float = GRACE_S
    t0: float = field(default_factory=time.time)
    offset: int = 0
    form: str = ""
    current: dict[str, Any] | None = None  # {"section", "budget_s", "started", "limit"}
    started_any: bool = False
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    children: set[int] = field(default_factory=set)  # process groups of the worker's own subprocesses

    def say(self, text: str) -> None:
        print(f"[{time.time() - self.t0:6.1f} s] {text}", flush=True)

    def read(self) -> None:
        import json

        if not self.events.exists():
            return
        with open(self.events) as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[:chunk.rfind("\n") + 1]
        self.offset += len(complete.encode())
        for line in complete.splitlines():
            self.handle(json.loads(line))

    def handle(self, event: dict[str, Any]) -> None:
        if event["event"] in ("child", "child_ended"):
            (self.children.add if event["event"] == "child" else self.children.discard)(int(event["pgid"]))
            return
        name = event["section"]
        if event["event"] == "start":
            self.form = self.form or event.get("form", "")
            limit = min(event["t"] + event["budget_s"] + self.grace, self.deadline)
            self.current = {"section": name, "budget_s": event["budget_s"], "started": event["t"], "limit": limit}
            self.started_any = True
            self.say(f"{name}: started (budget {event['budget_s']:.0f} s)")
            return
        outcome = {k: event[k] for k in ("status", "error", "elapsed_s", "result", "budget_s")}
        self.sections[name] = outcome
        self.current = None
        self.say(f"{name}: {outcome['status']} in {outcome['elapsed_s']:.1f} s{summary(outcome)}")

    def end_current(self, status: str, why: str) -> None:
        if self.current is None:
            return
        c = self.current
        self.sections[c["section"]] = {"status": status, "error": why, "elapsed_s": time.time() - c["started"],
                                       "budget_s": c["budget_s"], "result": {}}
        self.say(f"{c['section']}: {status}: {why}")
        self.current = None


def summary(outcome: dict[str, Any]) -> str:
    result, parts = outcome.get("result") or {}, []
    if result.get("summary"):
        parts.append(", ".join(f"{n} {k}" for k, n in result["summary"].items() if n))
    if result.get("figures"):
        parts.append(f"{len(result['figures'])} figure row(s)")
    if outcome.get("error"):
        parts.append(outcome["error"])
    return f" ({'; '.join(parts)})" if parts else ""


def log_tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])[:400]


def start_worker(sections: list[str], out: Path, watch: Watch, args: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gpucheck.sections", *sections, "--events", str(watch.events), "--out", str(out),
           "--deadline", str(watch.deadline)] + [f"--budget={b}" for b in args.section_budget]
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    log = open(out / "worker.log", "a")
    try:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def kill(proc: subprocess.Popen, children: set[int] = frozenset()) -> None:
    """The worker's process group, and those of the subprocesses it started in their own (pytest, sweeps)."""
    for group in (proc.pid, *children):
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()


def supervise(proc: subprocess.Popen, watch: Watch, log: Path, sections: list[str]) -> None:
    """Until the worker exits or is killed: read its events, cut a section past its limit."""
    while True:
        watch.read()
        if all(s in watch.sections for s in sections):  # all done: its interpreter's slow exit is not waited for
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                kill(proc, watch.children)
            return
        code = proc.poll()
        if code is not None:
            watch.read()
            watch.end_current("crashed", f"the worker exited {code} mid-section: {log_tail(log)}")
            return
        now = time.time()
        if watch.current is not None and now > watch.current["limit"]:
            kill(proc, watch.children)
            c = watch.current
            watch.end_current("cut", f"cut by the time guard after {now - c['started']:.0f} s "
                                     f"(its budget {c['budget_s']:.0f} s)")
            return
        if now > watch.deadline:
            kill(proc, watch.children)
            return
        time.sleep(POLL_S)


def run_all(sections: list[str], out: Path, watch: Watch, args: argparse.Namespace) -> None:
    """Workers until every section has an outcome or the budget is spent; a worker that dies before starting any
    section (an import error) ends it: the rest could not start either."""
    log = out / "worker.log"
    remaining = list(sections)
    while remaining and time.time() < watch.deadline - 1:
        watch.started_any = False
        proc = start_worker(remaining, out, watch, args)
        try:
            supervise(proc, watch, log, remaining)
        except BaseException:
            kill(proc, watch.children)
            watch.end_current("cut", "interrupted")
            raise
        remaining = [s for s in remaining if s not in watch.sections]
        if not watch.started_any:
            for s in remaining:
                watch.sections[s] = {"status": "error", "error": f"the worker could not start: {log_tail(log)}",
                                     "elapsed_s": 0.0, "budget_s": 0.0, "result": {}}
            return
    for s in remaining:
        watch.sections[s] = {"status": "cut", "error": "not started: the time guard's budget was spent",
                             "elapsed_s": 0.0, "budget_s": 0.0, "result": {}}


def build_report(sections: list[str], watch: Watch, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    ordered = {s: watch.sections[s] for s in sections if s in watch.sections}
    figures, checks = rep.collect_rows(ordered)
    env = (ordered.get("env") or {}).get("result") or {}
    machine = env.get("machine") or {"python": platform.python_version()}
    for s in ordered.values():  # the rows live at the top level; each section keeps its details
        s["result"] = {k: v for k, v in (s.get("result") or {}).items() if k not in ("figures", "checks")}
    failed = rep.failed_checks(checks)
    report = {"form": watch.form or machine.get("form", "unknown"), "machine": machine,
              "started": datetime.datetime.fromtimestamp(watch.t0, datetime.timezone.utc).isoformat(timespec="seconds"),
              "elapsed_s": time.time() - watch.t0, "budget_s": args.budget, "out": str(out),
              "figures": figures, "checks": checks, "failed_checks": [c["check"] for c in failed], "sections": ordered}
    report["exit_code"] = rep.exit_code(report)
    return report


def interrupted(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the worker is killed and what was measured is written


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",")] if args.only else list(SECTIONS)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    out = (args.out or default_out()).resolve()
    out.mkdir(parents=True, exist_ok=True)
    events = out / "events.jsonl"
    events.unlink(missing_ok=True)
    (out / "worker.log").unlink(missing_ok=True)
    watch = Watch(events, deadline=time.time() + args.budget, grace=args.grace)
    watch.say(f"gpu-check: sections {', '.join(sections)}; budget {args.budget:.0f} s; output in {out}")
    signal.signal(signal.SIGTERM, interrupted)
    try:
        run_all(sections, out, watch, args)
    except KeyboardInterrupt:
        watch.say("interrupted: writing what was measured")
        for s in sections:
            watch.sections.setdefault(s, {"status": "cut", "error": "not started: interrupted", "elapsed_s": 0.0,
                                          "budget_s": 0.0, "result": {}})
    report = build_report(sections, watch, args, out)
    json_path, md_path = rep.write(report, out)
    print(rep.markdown(report), flush=True)
    watch.say(f"wrote {json_path} and {md_path}; exit code {report['exit_code']}")
    return report["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
