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
                     "trial e ran out of memory after epoch 0 (host): Ray's memory monitor killed its worker. "
                     "Lower batch_size or image_size, or raise --memory-per-trial [4/6]"]


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


# --- a trial Ray's memory monitor or the kernel killed: one line, never Ray's paragraph -------------------------------

# Ray 2.60's own texts, copied from its raylet and GCS (`strings ray/core/src/ray/raylet/raylet`, `.../gcs_server`),
# their %s filled in as the raylet does
RAY260_KILLED = "1 worker(s) were killed due to the node running low on memory. "
RAY260_DETAILS = (
    "Memory on the node (IP: 10.0.0.5, ID: 71e7878eb13c726d6095054ce41704d644de5eaabe84b783773b159d) was 22.80GB "
    "used / 23.20GB limit (0.982759)\n"
    "(job ID=01000000, lease ID=e5a14101, task name=ImplicitFunc.train, required resources={CPU: 1, memory: "
    "1.50GiB}, pid=4321, actual memory used=9.85GB, worker ID=120780289d25b553)\n"
    "Top 10 memory users: \nPID\tMEM(GB)\tCOMMAND\n4321\t9.85\tray::ImplicitFunc.train\n")
RAY260_SUGGESTIONS = (
    "Refer to the documentation on how to address the out of memory issue: https://docs.ray.io/en/latest/"
    "ray-observability/user-guides/debug-apps/debug-memory.html. Consider provisioning more memory on this node or "
    "reducing task parallelism by requesting more CPUs per task. To adjust the kill threshold, set the environment "
    "variable `RAY_memory_usage_threshold` when starting Ray. To disable worker killing, set the environment "
    "variable `RAY_memory_monitor_refresh_ms` to zero.")
WORKER_DIED = "The actor is dead because its worker process has died. Worker exit type: "
KERNEL_DETAIL = (
    "Worker unexpectedly exits with a connection error code 2. End of file. Some common causes include: (1) the "
    "process was killed by the OOM killer due to high memory usage, (2) ray stop --force was called, or (3) the "
    "worker crashed unexpectedly due to SIGSEGV or another unexpected error. If the process was killed by the "
    "kernel OOM killer (verifiable by checking for OOM in dmesg of the OOMing node), consider enabling resource "
    "isolation via --enable-resource-isolation to prevent node deaths by resource contention and significant loss "
    "of progress by uninformed kernel OOM killing.")
# Ray's documented OutOfMemoryError before 2.56 (docs: ray-observability/user-guides/debug-apps/debug-memory.rst)
RAY_CLASSIC = (
    "Task was killed due to the node running low on memory.\nMemory on the node (IP: 10.0.62.231, ID: "
    "e5d953ef03e55e26f13973ea1b5a0fd0ecc729cd820bc89e4aa50451) where the task (task ID: "
    "43534ce9375fa8e4cd0d0ec285d9974a6a95897401000000, name=allocate_memory, pid=11362, memory used=1.25GB) was "
    "running was 27.71GB / 28.80GB (0.962273), which exceeds the memory usage threshold of 0.95. Ray killed this "
    "worker (ID: 6f2ec5c8b0d5f5a66572859faf192d36743536c2e9702ea58084b037) because it was the most recently "
    "scheduled task; to see more information about memory usage on this node, use `ray logs raylet.out -ip "
    "10.0.62.231`.\nTop 10 memory users:\nPID\tMEM(GB)\tCOMMAND\n11362\t1.25\tray::allocate_memory\n"
    + RAY260_SUGGESTIONS)


def actor_died(exit_type: str, detail: str):
    """Ray's real exception for a Tune trial (an actor) whose worker died, as Tune hands it over."""
    import ray
    from ray.core.generated.common_pb2 import ActorDiedErrorContext
    from ray.exceptions import ActorDiedError

    message = WORKER_DIED + exit_type + " Worker exit detail: " + detail
    return ActorDiedError(ActorDiedErrorContext(error_message=message, class_name="ImplicitFunc",
                                                actor_id=bytes(ray.ActorID.size()), pid=4321,
                                                node_ip_address="10.0.0.5"))


def test_a_trial_rays_memory_monitor_killed_is_oom_in_one_line():
    from ray.exceptions import OutOfMemoryError

    from tuner.results import TrialStatus, error_status, failure_line

    monitor = actor_died("NODE_OUT_OF_MEMORY", RAY260_KILLED + RAY260_DETAILS + RAY260_SUGGESTIONS)
    assert error_status(monitor) is TrialStatus.OOM
    line = failure_line(monitor)
    assert line == ("out of memory (host): Ray's memory monitor killed its worker (using 9.85 GB) with the node's "
                    "memory at 22.80 GB used of its 23.20 GB limit; it asked Ray for 1.50 GiB. Lower batch_size or "
                    "image_size, or raise --memory-per-trial")
    classic = OutOfMemoryError(RAY_CLASSIC)
    assert error_status(classic) is TrialStatus.OOM
    line = failure_line(classic, asked_bytes=2 * 2 ** 30)
    assert line == ("out of memory (host): Ray's memory monitor killed its worker (using 1.25 GB) with the node's "
                    "memory at 27.71 of 28.80 GB, past Ray's kill threshold of 0.95; it asked Ray for 2.00 GiB. "
                    "Lower batch_size or image_size, or raise --memory-per-trial")
    assert "Refer to the documentation" not in line and "\n" not in line


def test_a_worker_the_kernel_killed_is_oom_and_other_failures_keep_their_line():
    from tuner.results import TrialStatus, error_status, failure_line

    killed = actor_died("SYSTEM_ERROR", KERNEL_DETAIL)
    assert error_status(killed) is TrialStatus.OOM
    assert failure_line(killed, asked_bytes=2 ** 30) == (
        "out of memory (host): its worker process was killed (SIGKILL), most likely by the kernel's OOM killer on a "
        "node out of memory; it asked Ray for 1.00 GiB. Lower batch_size or image_size, or raise --memory-per-trial")
    assert error_status("ray.exceptions.WorkerCrashedError: worker exited with exit code 9") is TrialStatus.OOM
    plain = RuntimeError("Traceback ...\nRuntimeError: Output size is too small")
    assert error_status(plain) is TrialStatus.FAILED
    assert failure_line(plain) == "RuntimeError: Output size is too small"
    ours = "Traceback ...\ntuner.packing.TrialOutOfMemory: out of memory (host): allocating 64 MiB failed; it asked"
    assert failure_line(ours).startswith("tuner.packing.TrialOutOfMemory: out of memory (host): allocating")


def test_the_terminal_line_of_a_killed_trial_says_what_it_asked_and_what_the_node_had(tmp_path):
    """Tune's error.txt as Tune writes it (a header per failure, then the error's many lines)."""
    console = Console(record=True, width=400, force_terminal=False)
    view = LiveProgress(console, "val_top1", 2, max_epochs=4)
    error = tmp_path / "error.txt"
    error.write_text(f"Failure # 1 (occurred at 2026-12-03_06-00-00)\n"
                     f"{actor_died('NODE_OUT_OF_MEMORY', RAY260_KILLED + RAY260_DETAILS + RAY260_SUGGESTIONS)}\n")
    killed = trial("k", error_file=str(error))
    killed.placement_group_factory = SimpleNamespace(required_resources={"CPU": 1.0, "memory": 3 * 2 ** 30})
    view.on_trial_start(0, [], killed)
    view.on_trial_error(0, [], killed)
    line = console.export_text().strip().split("s ", 1)[1]
    assert line == ("trial k ran out of memory after epoch 0 (host): Ray's memory monitor killed its worker (using "
                    "9.85 GB) with the node's memory at 22.80 GB used of its 23.20 GB limit; it asked Ray for 3.00 "
                    "GiB. Lower batch_size or image_size, or raise --memory-per-trial [1/2]")


# --- --resume: trials that ended before count -----------------------------------------------------------------------

def test_a_resumed_sweep_counts_the_trials_that_ended_before_it(tmp_path):
    from ray.tune.experiment import Trial

    def restored(trial_id, status, epoch=None, **result):
        found = trial(trial_id, epoch, **result)
        found.status = status
        return found

    oom = tmp_path / "error.txt"
    oom.write_text("Failure # 1 (occurred at 2026-12-03_06-00-00)\nray.exceptions.OutOfMemoryError: "
                   + RAY_CLASSIC + "\n")
    trials = [restored("a", Trial.TERMINATED, 4, val_top1=66.5, best_val_top1=70.0),  # finished
              restored("b", Trial.TERMINATED, 1, val_top1=12.0),  # stopped by ASHA
              restored("c", Trial.ERROR, 2),
              restored("d", Trial.PAUSED, 2, val_top1=40.0),  # interrupted: runs again, seen when it starts
              restored("e", Trial.PENDING)]
    trials[2].error_file = str(oom)
    view = LiveProgress(Console(width=200, force_terminal=False), "val_top1", 6, max_epochs=4)
    view.on_step_begin(0, trials)
    assert view.ended() == 3
    assert view.counts_line() == "3/6 ended: 1 finished, 1 stopped, 1 oom, 0 running, 3 to go; best val_top1 70.00 (a)"
    view.on_step_end(1, trials)  # once: counted, not counted twice
    view.on_trial_start(1, trials, trials[3])
    view.on_trial_result(1, trials, trials[3], {"epoch": 3, "val_top1": 50.0, "epoch_s": 2.0})
    assert view.counts_line().startswith("3/6 ended: 1 finished, 1 stopped, 1 oom, 1 running, 2 to go")
    # ETA: d has 1 epoch left; 2 not started x the mean epochs of ended trials (4, 1, 2: 7/3); 2 s an epoch
    assert view.eta_s() == pytest.approx((1 + 2 * 7 / 3) * 2.0)


def test_resume_seeding_reads_real_tune_trials():
    """The attributes read are those of Tune's own Trial (status, last_result, config, trial_id)."""
    from ray.tune.experiment import Trial
    from ray.tune.registry import register_trainable

    register_trainable("progress_stub", lambda config: None)
    ended, pending = Trial("progress_stub", config={"max_epochs": 4}), Trial("progress_stub", config={"max_epochs": 4})
    ended.set_status(Trial.TERMINATED)
    ended.run_metadata.last_result = {"epoch": 4, "val_top1": 50.0, "best_val_top1": 55.0}
    view = LiveProgress(Console(width=200, force_terminal=False), "val_top1", 3, max_epochs=4)
    view.on_step_begin(0, [ended, pending])
    assert view.counts_line() == f"1/3 ended: 1 finished, 0 running, 2 to go; best val_top1 55.00 ({ended.trial_id})"
