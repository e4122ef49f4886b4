"""Live progress in the terminal (rich): trials pending / running / done / stopped / failed and the best so far."""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from tuner.callbacks import DriverCallback


class LiveProgress(DriverCallback):
    """A live table on a terminal; one line per finished trial elsewhere (CI logs, pipes)."""

    role = "progress"

    def __init__(self, console: Console, metric: str, total: int | None) -> None:
        self.console = console
        self.metric = metric
        self.total = total
        self.best: tuple[float, str] | None = None
        self.started = time.monotonic()
        self.live: Live | None = None
        self._last_draw = 0.0

    def setup(self, **info) -> None:
        if self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=2, transient=True)
            self.live.start()

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        value = result.get(self.metric)
        if value is not None and (self.best is None or value > self.best[0]):
            self.best = (float(value), trial.trial_id)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if self.live is not None and time.monotonic() - self._last_draw > 0.5:
            self._last_draw = time.monotonic()
            self.live.update(self._table(trials))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        self._line(f"trial {trial.trial_id} done after epoch {result.get('epoch', 0)}: "
                   f"{self.metric} {result.get(self.metric, float('nan')):.2f}")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(f"[red]trial {trial.trial_id} failed[/red] (log: {trial.error_file})")

    def on_experiment_end(self, trials: list, **info) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _line(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        self.console.print(f"[dim]{elapsed:6.0f}s[/dim] {text}")

    def _table(self, trials: list) -> Table:
        counts: dict[str, int] = {}
        for trial in trials:
            counts[trial.status] = counts.get(trial.status, 0) + 1
        table = Table(box=None, show_header=True, header_style="bold")
        for column in ("elapsed", "pending", "running", "terminated", "error", "best " + self.metric):
            table.add_column(column, justify="right")
        best = f"{self.best[0]:.2f} ({self.best[1]})" if self.best else "-"
        total = f"/{self.total}" if self.total else ""
        table.add_row(f"{time.monotonic() - self.started:.0f}s", str(counts.get("PENDING", 0)),
                      str(counts.get("RUNNING", 0)), f"{counts.get('TERMINATED', 0)}{total}",
                      str(counts.get("ERROR", 0)), best)
        return table
