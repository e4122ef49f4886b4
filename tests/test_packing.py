"""--gpus-per-trial auto: the packing arithmetic, the configs it measures, and its CPU-only behaviour."""

import json

import pytest
import torch

from tests.conftest import REPO, run_cli
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
