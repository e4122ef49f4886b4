"""What a running sweep shows. On a terminal, a live view (rich): a bar of trials ended out of those asked with an
ETA, counts that add up, the running trials with their epoch and latest val top-1, and the top 3. Elsewhere (CI,
`| tee`), plain lines: one per ended trial, and a progress line every minute.

The ETA counts trial-epochs still to run: the rest of each running trial's budget, and for each trial not started
yet the mean epochs ended trials ran (ASHA stops most early), at the median epoch time so far, spread over the
trials running at once.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from tuner.callbacks import DriverCallback
from tuner.results import TrialStatus, asked_memory, error_status, failure_line, last_failure, trial_status

PLAIN_EVERY_S = 60.0  # a progress line this often when the output is not a terminal
TOP = 3

ENDED_AS = {TrialStatus.FINISHED: "finished", TrialStatus.EARLY_STOPPED: "early-stopped (patience)",
            TrialStatus.STOPPED: "stopped by {scheduler}", TrialStatus.DIVERGED: "diverged (non-finite loss)",
            TrialStatus.FAILED: "failed", TrialStatus.OOM: "ran out of memory",
            TrialStatus.INFEASIBLE: "not trained (breaks a cost budget)"}


@dataclass
class TrialView:
    trial_id: str
    epoch: int = 0
    value: float | None = None  # the latest of the sweep's metric
    best: float | None = None
    epoch_s: list[float] = field(default_factory=list)
    status: TrialStatus | None = None  # once ended


class LiveProgress(DriverCallback):
    """The live view of one Tune experiment (see the module's docstring)."""

    role = "progress"

    def __init__(self, console: Console, metric: str, total: int | None, max_epochs: int = 1,
                 scheduler: str | None = "ASHA", mode: str = "max") -> None:
        self.console = console
        self.metric, self.mode = metric, mode
        self.total = total  # trials asked for (None: a grid, sized once Tune has generated it)
        self.max_epochs = max_epochs
        self.scheduler = scheduler or "the scheduler"
        self.trials: dict[str, TrialView] = {}
        self.started = time.monotonic()
        self.live: Live | None = None
        self._last_draw = self._last_line = time.monotonic()
        self._seeded = False  # trials that ended before this run (--resume) are counted from Tune's list once

    # --- Tune's events ---------------------------------------------------------------------------------------

    def setup(self, total_num_samples: int | None = None, **info) -> None:
        self.total = self.total or total_num_samples
        if self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=4, transient=True)
            self.live.start()

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.trials.setdefault(trial.trial_id, TrialView(trial.trial_id))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        view = self.trials.setdefault(trial.trial_id, TrialView(trial.trial_id))
        view.epoch = int(result.get("epoch", view.epoch))
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and value == value:
            view.value = float(value)
            view.best = view.value if view.best is None else (max if self.mode == "max" else min)(view.best, value)
        if result.get("epoch_s"):
            view.epoch_s.append(float(result["epoch_s"]))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        if "epoch" not in result:
            return  # never started (the sweep was stopped first)
        status = trial_status(result, errored=False, max_epochs=int(trial.config.get("max_epochs",
                                                                                      self.max_epochs)))
        self._ended(trial.trial_id, status, f": {self.metric} {result.get(self.metric, float('nan')):.2f}")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        last = failure_line(last_failure(trial.error_file), asked_memory(trial))  # one line, Ray's kills too
        status = error_status(last) if last else TrialStatus.FAILED
        if status is TrialStatus.OOM:  # our guard's line, or an allocator's / Ray's own
            reason = last.split(": ", 1)[-1] if last.split(": ", 1)[0].endswith(("Error", "Memory")) else last
            detail = " " + reason.removeprefix("out of memory").lstrip(": ")[:400]
        else:
            detail = f": {last[:300]}" if last else f" (log: {trial.error_file})"
        self._ended(trial.trial_id, status, escape(detail))

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        self.seed(trials)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self.seed(trials)
        now = time.monotonic()
        if self.live is not None and now - self._last_draw > 0.25:
            self._last_draw = now
            self.live.update(self.render())
        elif self.live is None and now - self._last_line > PLAIN_EVERY_S:
            self._last_line = now
            self._line(f"progress: {self.counts_line()}; ETA {format_eta(self.eta_s())}")

    def on_experiment_end(self, trials: list, **info) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def seed(self, trials: list) -> None:
        """The first time Tune's trial list is seen: trials already ended in it (a --resume restores them, and
        Tune sends them no events again) count as ended, with their status, epochs and best value."""
        if self._seeded or not trials:
            return
        self._seeded = True
        for trial in trials:
            if trial.trial_id in self.trials or trial.status not in ("TERMINATED", "ERROR"):
                continue  # pending or unfinished ones start (again) and are seen then
            result = trial.last_result or {}
            if trial.status == "ERROR":
                status = error_status(failure_line(last_failure(trial.error_file)))
            elif "epoch" in result:
                status = trial_status(result, errored=False,
                                      max_epochs=int(trial.config.get("max_epochs", self.max_epochs)))
            else:
                continue  # never started (an earlier sweep stopped first): no row, not ended
            view = self.trials[trial.trial_id] = TrialView(trial.trial_id, int(result.get("epoch", 0)))
            view.status = status
            value, best = result.get(self.metric), result.get(f"best_{self.metric}")
            if isinstance(value, (int, float)) and value == value:
                view.value = float(value)
                view.best = float(best) if isinstance(best, (int, float)) and best == best else view.value

    # --- what is shown -------------------------------------------------------------------------------------

    def _ended(self, trial_id: str, status: TrialStatus, detail: str) -> None:
        view = self.trials.setdefault(trial_id, TrialView(trial_id))
        view.status = status
        colour = "red" if status in (TrialStatus.FAILED, TrialStatus.OOM, TrialStatus.DIVERGED) else ""
        words = ENDED_AS[status].format(scheduler=self.scheduler)
        words = f"[{colour}]{words}[/{colour}]" if colour else words
        self._line(f"trial {trial_id} {words} after epoch {view.epoch}{detail} [{self.ended()}/{self.total or '?'}]")

    def _line(self, text: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self.started:6.0f}s[/dim] {text}", soft_wrap=True)

    def ended(self) -> int:
        return sum(v.status is not None for v in self.trials.values())

    def running(self) -> list[TrialView]:
        return [v for v in self.trials.values() if v.status is None]

    def counts_line(self) -> str:
        """finished / stopped / failed ... / running / to go, adding up to the trials asked for."""
        counts: dict[str, int] = {}
        for view in self.trials.values():
            if view.status is not None:
                name = "stopped" if view.status is TrialStatus.STOPPED else view.status.value
                counts[name] = counts.get(name, 0) + 1
        parts = [f"{n} {name}" for name, n in counts.items()] + [f"{len(self.running())} running"]
        if self.total:
            parts.append(f"{max(0, self.total - len(self.trials))} to go")
        best = self.leaders(1)
        tail = f"; best {self.metric} {best[0].best:.2f} ({best[0].trial_id})" if best else ""
        return f"{self.ended()}/{self.total or '?'} ended: " + ", ".join(parts) + tail

    def leaders(self, n: int = TOP) -> list[TrialView]:
        scored = [v for v in self.trials.values() if v.best is not None]
        return sorted(scored, key=lambda v: -v.best if self.mode == "max" else v.best)[:n]

    def eta_s(self) -> float | None:
        times = [s for v in self.trials.values() for s in v.epoch_s]
        if not times or not self.total:
            return None
        ended = [v.epoch for v in self.trials.values() if v.status is not None]
        per_trial = statistics.fmean(ended) if ended else self.max_epochs
        left = sum(max(0, self.max_epochs - v.epoch) for v in self.running())
        left += max(0, self.total - len(self.trials)) * per_trial
        return left * statistics.median(times) / max(1, len(self.running()))

    def render(self) -> Group:
        elapsed = time.monotonic() - self.started
        bar = ProgressBar(total=self.total or max(1, len(self.trials)), completed=self.ended(), width=40)
        head = Text.assemble(("trials ", "bold"), f"{self.ended()}/{self.total or '?'} ")
        status = Table.grid(padding=(0, 1))
        status.add_row(head, bar, Text(f"{elapsed:.0f}s elapsed, ETA {format_eta(self.eta_s())}"))
        running = Table(title="running", title_justify="left", box=None, header_style="bold", pad_edge=False)
        for column in ("trial", "epoch", self.metric, "s/epoch"):
            running.add_column(column, justify="right")
        for view in self.running()[:8]:
            running.add_row(view.trial_id, f"{view.epoch}/{self.max_epochs}",
                            "-" if view.value is None else f"{view.value:.2f}",
                            f"{view.epoch_s[-1]:.1f}" if view.epoch_s else "-")
        top = Table(title=f"top {TOP}", title_justify="left", box=None, header_style="bold", pad_edge=False)
        for column in ("trial", f"best {self.metric}", "epochs", "status"):
            top.add_column(column, justify="right")
        for view in self.leaders():
            top.add_row(view.trial_id, f"{view.best:.2f}", str(view.epoch),
                        view.status.value if view.status else "running")
        return Group(status, Text(self.counts_line(), style="dim"), running, top)


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
