"""--gpus-per-trial auto and --memory-per-trial auto: the packing arithmetic, the configs measured, the per-trial
memory cap, and the CPU-only behaviour."""

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, probe_in_fresh_process, run_cli
from tuner import packing
from tuner.spec import build_spec


def test_choose_packing():
    gib = 2 ** 30
    assert packing.choose_packing(10 * gib, 80 * gib) == 8  # capped
    assert packing.choose_packing(30 * gib, 80 * gib) == 2
    assert packing.choose_packing(81 * gib, 80 * gib) == 0
    assert packing.trial_bytes(gib) == int(1.25 * gib) + packing.CUDA_CONTEXT_BYTES


def test_memory_configs_cover_every_searched_model():
    spec = build_spec(space="cnn_grid", dataset="digits")
    configs = packing.memory_configs(spec)
    assert {c["model"] for c in configs} == {"cnn_basic", "resnet18", "vit_scratch"}
    assert len(configs) <= packing.MAX_MEASURED
    # keys that do not change memory do not multiply the measurements
    assert len({(c["model"], c["batch_size"], c.get("image_size")) for c in configs}) == len(configs)


def test_gpus_per_trial_must_be_a_number_or_auto(capsys, tmp_path):
    from tuner.run import EXIT_USER_ERROR, main

    code = main(["--space", "resnet_rsb", "--gpus-per-trial", "lots", "--storage", str(tmp_path / "s")])
    assert code == EXIT_USER_ERROR and "give a number of GPUs (0.25 packs 4 trials per GPU) or auto" in \
        capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="measuring CUDA memory needs a GPU (none here)")
def test_measure_peak_bytes_on_a_gpu():
    small = packing.measure_peak_bytes({"model": "cnn_basic", "batch_size": 64}, 10, 32)
    large = packing.measure_peak_bytes({"model": "cnn_basic", "batch_size": 512}, 10, 32)
    assert 0 < small < large


@pytest.mark.integration
def test_auto_on_a_cluster_without_gpus_trains_on_cpu(tmp_path):
    proc = run_cli("--space", "resnet_rsb", "--dataset", "digits", "--num-samples", "1", "--max-epochs", "1",
                   "--set", "model=cnn_basic", "--set", "width=0.5", "--gpus-per-trial", "auto",
                   "--storage", str(tmp_path), "--name", "auto", "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}",
                   cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "--gpus-per-trial auto: the Ray cluster has no GPU, so trials train on CPU" in " ".join(proc.stdout.split())
    assert json.loads((tmp_path / "auto" / "sweep.json").read_text())["spec"]["gpus_per_trial"] == 0.0


# --- host memory ----------------------------------------------------------------------------------------------------

GIB = 2 ** 30


def test_host_request_and_how_many_fit():
    assert packing.host_trial_bytes(GIB) == int(packing.HOST_SAFETY * GIB) + packing.HOST_EXTRA
    spec = build_spec(space="resnet_rsb", dataset="digits")
    node = {"memory": 15 * GIB, "CPU": 8}
    assert packing.trials_at_once(4 * GIB, spec, node) == (3, "memory is")
    assert packing.trials_at_once(GIB, spec, node) == (8, "CPUs are")
    capped = build_spec(space="resnet_rsb", dataset="digits", max_concurrent=2)
    assert packing.trials_at_once(GIB, capped, node) == (2, "--max-concurrent is")
    on_gpus = build_spec(space="resnet_rsb", dataset="digits", gpus_per_trial=0.5)
    assert packing.trials_at_once(GIB, on_gpus, {**node, "GPU": 2}) == (4, "GPUs are")


def test_numeric_memory_axes_are_measured_at_both_ends():
    from ray import tune

    assert packing.domain_ends(tune.randint(16, 257)) == (16, 256)  # randint's upper bound is exclusive
    assert packing.domain_ends(tune.qrandint(32, 256, 32)) == (32, 256)
    assert packing.domain_ends(tune.uniform(0.5, 2.0)) == (0.5, 2.0)
    assert packing.domain_ends(tune.choice([1, 2])) == ()


def test_explicit_memory_is_checked_against_the_largest_node(capsys):
    from rich.console import Console

    spec = build_spec(space="resnet_rsb", dataset="digits", memory_per_trial="6GB")
    nodes = [{"memory": 8 * GIB, "CPU": 4}, {"memory": 20 * GIB, "CPU": 2}]
    assert packing.resolve_memory_per_trial(spec, 10, 32, 144, nodes, Console()) == 6 * GIB
    line = capsys.readouterr().out
    assert "memory: 6.0 GiB per trial (--memory-per-trial" in line
    assert "2 trial(s) fit at once on the largest node (20.0 GiB for Ray, 2 CPUs; CPUs are the limit)" in line
    big = build_spec(space="resnet_rsb", dataset="digits", memory_per_trial="64GB")
    with pytest.raises(packing.UserError, match=r"needs 64.0 GiB .* more than the 20.0 GiB of memory the largest "
                                                r"node offers Ray"):
        packing.resolve_memory_per_trial(big, 10, 32, 144, nodes, Console())


@pytest.mark.parametrize("sets,needle", [
    (["batch_size=4096"], "batch_size 4096 exceeds the 1293 training images"),
    ([], None),
])
def test_batch_sizes_are_checked_over_the_whole_range(sets, needle):
    spec = build_spec(space="resnet_rsb", dataset="digits", sets=sets)
    if needle is None:
        packing.check_batch_sizes(spec, 1293)
    else:
        with pytest.raises(packing.UserError, match=needle):
            packing.check_batch_sizes(spec, 1293)
    with pytest.raises(packing.UserError, match="batch_size 128 exceeds the 100 training images"):
        packing.check_batch_sizes(build_spec(space="resnet_rsb", dataset="cifar100"), 100)


def test_one_step_is_measured_for_peak_private_memory():
    small = probe_in_fresh_process({"model": "cnn_basic", "width": 0.25, "batch_size": 16}, 10, 16, 16)
    large = probe_in_fresh_process({"model": "cnn_basic", "width": 0.25, "batch_size": 512}, 10, 32, 512)
    assert 0 < small["baseline"] <= small["peak"] < large["peak"] and small["gpu_peak"] == 0


def test_a_capped_process_fails_its_allocation_not_the_node():
    """RLIMIT_DATA, for real, in a fresh process: an allocation past the cap raises; the cap is lifted after."""
    code = ("import torch\n"
            "from tuner.packing import data_limit, is_out_of_memory, process_memory\n"
            "with data_limit(process_memory()['RssAnon'] + 64 * 2**20):\n"
            "    try:\n"
            "        torch.ones(256 * 2**20, dtype=torch.uint8)\n"
            "        print('allocated')\n"
            "    except RuntimeError as exc:\n"
            "        print('refused', is_out_of_memory(exc))\n"
            "torch.ones(256 * 2**20, dtype=torch.uint8)\n"
            "print('lifted')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["refused", "True", "lifted"], proc.stdout + proc.stderr


def test_oom_reason_says_what_was_asked_and_free():
    error = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                         "memory: you tried to allocate 67108864 bytes. Error code 12 (Cannot allocate memory)")
    assert packing.is_out_of_memory(error) and not packing.is_out_of_memory(RuntimeError("shape mismatch"))
    reason = packing.oom_reason(error, packing.TrialGuard(memory_bytes=GIB), on_gpu=False)
    assert reason.startswith("out of memory (host): allocating 67108864 bytes failed; it asked Ray for 1.00 GiB")
    assert "available" in reason and "\n" not in reason
    from tuner.results import TrialStatus, error_status

    assert error_status(f"tuner.packing.TrialOutOfMemory: {reason}") is TrialStatus.OOM
