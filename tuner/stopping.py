"""Stopping a sweep on purpose.

- Ctrl-C or SIGTERM (`docker compose stop`, `scancel`, a SLURM time limit, a pod eviction): a clean stop. Inside
  a Tune experiment, Ray's own graceful interrupt ends it after the current step with its state saved, running
  trials left to continue from their checkpoints on --resume; elsewhere the phase at hand is abandoned (every
  file is written aside and renamed, so nothing is half-written). The sweep is then recorded as interrupted and
  the command exits 128 + the signal's number (130, 143).
- A second signal stops at once; --resume still continues from Ray's last saved state.
- The sweep's own ends, `--time-budget` and `--stop-at METRIC=VALUE` (SweepStopper): running trials are stopped,
  and the sweep completes (tests and registers the best so far), recording what ended it.

Signals are process-wide, so the signal state lives here, in one place, for the one driver of this process.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ray import tune

from trainables.errors import UserError
from tuner.callbacks import DriverCallback
from tuner.cli import Interrupted, resume_command

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
SAVE_EVERY_S = 30.0  # how often the experiment's elapsed time is saved: what a kill -9 can lose of the budget

log = logging.getLogger(__name__)


@dataclass
class _SignalState:
    first: int | None = None  # the first stop signal received, if any
    installed: bool = False


_STATE = _SignalState()


def received() -> int | None:
    """The first stop signal this command received (None: none)."""
    return _STATE.first


def _stop_now(signum: int, frame) -> None:
    if _STATE.first is None:
        _STATE.first = signum
        raise Interrupted(signum)  # outside Tune's loop: the phase at hand is abandoned, the stop recorded
    _exit_at_once(signum)


def _exit_at_once(signum: int) -> None:
    """A second stop signal: this driver's own Ray processes are killed and it exits now, without unwinding
    (an exception raised inside Ray's C++ calls would come out as a SystemError). As after kill -9, --resume
    continues from Ray's last saved state."""
    import os

    import psutil

    name = signal.Signals(signum).name
    hint = f"; continue with: {resume_command()}" if resume_command() else ""
    print(f"stopped at once by a second {name}{hint}", flush=True)
    for child in psutil.Process().children(recursive=True):  # the local Ray instance this driver started
        try:
            child.kill()
        except psutil.Error:
            pass
    os._exit(128 + signum)


@contextlib.contextmanager
def signals_handled() -> Iterator[None]:
    """SIGINT and SIGTERM raise cli.Interrupted for the command's lifetime (outside Tune's loop)."""
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    _STATE.first, _STATE.installed = None, True
    take_signals()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _STATE.installed = False


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Stop signals wait until the block is done (recording a stop, shutting Ray down): a further Ctrl-C must not
    cut those short. A signal that came meanwhile is raised at the end."""
    if not _STATE.installed:
        yield
        return
    came: list[int] = []
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        signal.signal(s, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if came:
        _stop_now(came[0], None)


def take_signals() -> None:
    """(Re)install our handlers: ray.init puts its own SIGTERM handler in place, which would end the driver
    with exit 1 and none of our records."""
    if _STATE.installed:
        for s in STOP_SIGNALS:
            signal.signal(s, _stop_now)


class TuneSignals(DriverCallback):
    """While Tune's loop runs, a first SIGINT/SIGTERM goes to Ray's graceful interrupt, a second stops at once.
    It also keeps each trial's status as the last step began and ended: what a stop left running or pending (a
    signal ends the loop after a step; the sweep's own stop, `stop_all`, ends the trials inside the step)."""

    role = "signals"

    def __init__(self) -> None:
        self.at_begin: dict[str, str] = {}
        self.at_end: dict[str, str] = {}

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        self.at_begin = {t.trial_id: t.status for t in trials}

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self.at_end = {t.trial_id: t.status for t in trials}

    def setup(self, **info) -> None:
        ray_handler = signal.getsignal(signal.SIGINT)  # tune.run installs it just before calling setup
        if not _STATE.installed or not callable(ray_handler) or ray_handler is _stop_now:
            return

        def graceful(signum: int, frame) -> None:
            if _STATE.first is None:
                _STATE.first = signum
            for s in STOP_SIGNALS:
                signal.signal(s, _stop_now)  # the next one stops at once
            ray_handler(signal.SIGINT, frame)  # ends the loop after this step, state saved
            signal.signal(signal.SIGINT, _stop_now)  # Ray put back what it found: ours, kept explicit

        for s in STOP_SIGNALS:
            signal.signal(s, graceful)

    def on_experiment_end(self, trials: list, **info) -> None:
        take_signals()


# --- the sweep's own ends ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """--stop-at METRIC=VALUE: the sweep ends once a trial reaches VALUE (at least, for a maximised metric)."""

    metric: str
    value: float
    mode: str = "max"

    def reached(self, value: Any) -> bool:
        if not isinstance(value, (int, float)) or value != value:
            return False
        return value >= self.value if self.mode == "max" else value <= self.value

    def __str__(self) -> str:
        return f"{self.metric}{'>=' if self.mode == 'max' else '<='}{self.value:g}"


class SweepStopper(tune.Stopper):
    """Ends the experiment when the sweep's time budget is spent or a trial reaches the target.

    Pickled into the experiment's state like callbacks are: it pickles as a reference to the live one, which
    knows the budget left for this driver run (the budget spent before a --resume is subtracted by the sweep).
    Every `save_every_s` it hands `save` the seconds run so far (the sweep writes them to sweep.json), so a driver
    killed without a word (kill -9, a crash) has its time counted against the budget up to the last save."""

    role = "stopper"

    def __init__(self, budget_s: float | None, target: Target | None,
                 save: Callable[[float], None] | None = None, save_every_s: float = SAVE_EVERY_S) -> None:
        self.budget_s = budget_s
        self.target = target
        self.started = time.monotonic()
        self.reason: str | None = None  # why the sweep ended early, once it has
        self.save = save
        self.save_every_s = save_every_s
        self._saved_at = self.started

    def __reduce__(self):
        return (_bound_stopper, ())

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if self.target is not None and self.reason is None and self.target.reached(result.get(self.target.metric)):
            self.reason = f"target {self.target} reached by trial {trial_id}"
        return False  # each trial is stopped by stop_all, together

    def stop_all(self) -> bool:
        self.save_now_and_then()  # Tune asks this at every step of its loop
        if self.reason is None and self.budget_s is not None and self.elapsed_s() >= self.budget_s:
            self.reason = f"time budget of {format_duration(self.budget_s)} spent"
        return self.reason is not None

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def save_now_and_then(self) -> None:
        """`save(elapsed)` once `save_every_s` have passed since the last save; a failed write (a full disk) is a
        warning: the sweep goes on, and the end of this run saves its time again."""
        now = time.monotonic()
        if self.save is None or now - self._saved_at < self.save_every_s:
            return
        self._saved_at = now
        try:
            self.save(now - self.started)
        except OSError as exc:
            log.warning("could not save the sweep's elapsed time (%s)", exc.strerror or exc)


_LIVE_STOPPER: list[SweepStopper] = []


def bind_stopper(stopper: SweepStopper) -> SweepStopper:
    _LIVE_STOPPER[:] = [stopper]
    return stopper


def _bound_stopper() -> tune.Stopper:
    return _LIVE_STOPPER[0] if _LIVE_STOPPER else tune.stopper.NoopStopper()


# --- parsing the flags -------------------------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90m', '2h', '1h30m', '45s', '1.5h' or plain seconds -> seconds; a UserError names the bad value."""
    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", value)
        if not parts or "".join(f"{n}{u}" for n, u in parts) != value.replace(" ", ""):
            raise UserError(f"--time-budget {text!r}: give a duration such as 90m, 2h, 1h30m or 3600 (seconds)")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise UserError(f"--time-budget {text!r}: the budget must be longer than zero")
    return seconds


def parse_target(text: str, metrics: tuple[str, ...], mode_of) -> Target:
    """'val_top1=95' -> Target; `metrics` are the ones a target may name, `mode_of(metric)` their direction."""
    metric, sep, value = str(text).partition("=")
    metric = metric.strip()
    if not sep or not metric:
        raise UserError(f"--stop-at {text!r}: write METRIC=VALUE, e.g. --stop-at val_top1=95")
    if metric not in metrics:
        raise UserError(f"--stop-at {text!r}: unknown metric '{metric}'; choose one of: {', '.join(metrics)}")
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"--stop-at {text!r}: '{value.strip()}' is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise UserError(f"--stop-at {text!r}: the target must be a finite number")
    return Target(metric, number, mode_of(metric))


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
