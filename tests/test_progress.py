"""The live view, fed the events Tune sends: plain lines off a terminal, counts that add up, stops told apart from
finishes and failures, an ETA from measured epoch times, and the terminal view with its bar, running trials and
top 3. TERMINAL_SCREENSHOT=docs/terminal.svg saves the terminal view as the README's picture."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
from rich.console import Console

from tuner.progress import LiveProgress, format_eta


def trial(trial_id, epoch=None, error_file=None, **result):
    last = {"trial_id": trial_id, **({"epoch": epoch} if epoch is not None else {}), **result}
    return SimpleNamespace(trial_id=trial_id, config={"max_epochs": 4}, last_result=last, error_file=error_file)


def fed(console, total=6):
    view = LiveProgress(console, "val_top1", total, max_epochs=4, scheduler="ASHA")
    for tid in ("a", "b", "c", "d"):
        view.on_trial_start(0, [], trial(tid))
    for epoch, value in ((1, 40.0), (2, 55.0), (3, 61.0), (4, 66.5)):
        view.on_trial_result(0, [], trial("a"), {"epoch": epoch, "val_top1": value, "epoch_s": 2.0})
    view.on_trial_complete(0, [], trial("a", 4, val_top1=66.5))
    view.on_trial_result(0, [], trial("b"), {"epoch": 1, "val_top1": 12.0, "epoch_s": 2.0})
    view.on_trial_complete(0, [], trial("b", 1, val_top1=12.0))
    view.on_trial_result(0, [], trial("c"), {"epoch": 2, "val_top1": 58.0, "epoch_s": 4.0})
    return view


def test_plain_lines_tell_finishes_stops_and_failures_apart(tmp_path):
    console = Console(record=True, width=200, force_terminal=False)
    view = fed(console)
    error = tmp_path / "error.txt"
    error.write_text("Traceback ...\nRuntimeError: Output size is too small\n")
    view.on_trial_error(0, [], trial("d", error_file=str(error)))
    oom = tmp_path / "oom.txt"
    oom.write_text("ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.\n")
    view.on_trial_start(0, [], trial("e"))
    view.on_trial_error(0, [], trial("e", error_file=str(oom)))
    lines = [line.split("s ", 1)[1] for line in console.export_text().splitlines()]
    assert lines == ["trial a finished after epoch 4: val_top1 66.50 [1/6]",
                     "trial b stopped by ASHA after epoch 1: val_top1 12.00 [2/6]",
                     "trial d failed after epoch 0: RuntimeError: Output size is too small [3/6]",
                     "trial e ran out of memory after epoch 0 Task was killed due to the node running low on "
                     "memory. [4/6]"]


def test_counts_add_up_and_the_eta_counts_what_is_left(tmp_path):
    view = fed(Console(width=200, force_terminal=False))
    counts = view.counts_line()
    assert counts.startswith("2/6 ended: 1 finished, 1 stopped, 2 running, 2 to go")  # 1 + 1 + 2 + 2 = 6
    assert counts.endswith("best val_top1 66.50 (a)")
    # running: c has 2 epochs left, d 4; not started: 2 trials x the mean epochs of ended ones (4 and 1: 2.5);
    # the median epoch time 2 s, over 2 running trials
    assert view.eta_s() == pytest.approx((2 + 4 + 2 * 2.5) * 2.0 / 2)
    assert [format_eta(s) for s in (None, 42, 600, 7200)] == ["-", "42s", "10m", "2.0h"]


def test_the_terminal_view_draws_the_bar_the_running_trials_and_the_top_3():
    console = Console(record=True, width=100, force_terminal=True, color_system="truecolor")
    view = fed(console)
    console.print(view.render())
    text = console.export_text()
    assert "trials 2/6" in text and "ETA" in text and "running" in text and "top 3" in text
    assert "c" in text and "2/4" in text and "58.00" in text  # trial c at epoch 2 of 4, val top-1 58
    assert text.index("66.50") < text.index("58.00")  # the top 3, best first
    shot = os.environ.get("TERMINAL_SCREENSHOT")
    if shot:
        console.save_svg(shot, title="python -m tuner.run --space resnet_rsb")
