"""tuner.export and tuner.predict on a real digits sweep: TorchScript and ONNX exports that predict like the
checkpoint, the benchmark table, everything attached to MLflow; the registered model loaded back and tuner.predict
agreeing with the checkpoint on test images written as PNG files; one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests._digits_sweep import REGISTERED, digits_sweep, run_module
from tests.conftest import user_module
from tuner import predict


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, mlflow_server) -> Path:
    return digits_sweep(tmp_path_factory, mlflow_server)


@pytest.fixture(scope="module")
def record(sweep_dir) -> dict:
    return json.loads((sweep_dir / "sweep.json").read_text())


@pytest.fixture(scope="module")
def reference(sweep_dir, record):
    """The winner rebuilt from its checkpoint, as the sweep tested it."""
    from trainables.classify import load_checkpoint_model
    from tuner import folder

    # trials.parquet keeps checkpoints relative to the sweep folder; tuner.folder resolves them
    checkpoint = folder.load(sweep_dir).trial(record["winner"])["checkpoint"]
    model, _ = load_checkpoint_model(checkpoint)
    return model


@pytest.fixture(scope="module")
def test_images(tmp_path_factory):
    """Twelve digits test images as uint8 (N, 3, 32, 32) and as PNG files."""
    from PIL import Image

    from trainables.data import load_dataset

    images = load_dataset("digits").test_x[:12]
    folder = tmp_path_factory.mktemp("pngs")
    files = []
    for i, image in enumerate(images):
        files.append(folder / f"digit_{i}.png")
        Image.fromarray(image.transpose(1, 2, 0)).save(files[-1])
    return images, files


def registered_version(client, parent_run_id: str) -> str:
    """This sweep's version of the registered model (other tests of the session may register the same name)."""
    versions = [v for v in client.search_model_versions(f"name='{REGISTERED}'")
                if v.tags.get("sweep.parent_run_id") == parent_run_id]
    assert len(versions) == 1
    return versions[0].version


@pytest.mark.integration
def test_export_torchscript_and_onnx_match_eager(sweep_dir, record, reference, mlflow_server, test_images):
    import mlflow
    import onnxruntime as ort

    proc = run_module("tuner.export", str(sweep_dir), "--batch", "16", "--iterations", "5", "--budget", "0.3",
                      cwd=sweep_dir.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "attached to MLflow run" in proc.stdout
    out = sweep_dir / "export"
    summary = json.loads((out / "export.json").read_text())
    assert summary["trial_id"] == record["winner"]
    size = summary["input"]["shape"][-1]
    assert size == reference.input_size

    images = torch.from_numpy(test_images[0]).float() / 255
    batch = predict.resize_to(images, size)
    with torch.no_grad():
        eager = reference(images)  # the checkpoint model resizes 32 px itself
        assert torch.allclose(reference(batch), eager, atol=1e-5)
    # ONNX through onnxruntime: same logits as eager PyTorch, any batch size
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, len(batch)):
        logits = session.run(None, {session.get_inputs()[0].name: batch[:n].numpy()})[0]
        assert np.abs(logits - eager[:n].numpy()).max() < 1e-4
    assert summary["checks"]["onnx_max_abs_diff"] < 1e-4 and summary["checks"]["onnx_same_top1"] == 1.0
    # TorchScript
    scripted = torch.jit.load(str(out / "model.pt"))
    with torch.no_grad():
        assert torch.allclose(scripted(batch), eager, atol=1e-5)
    assert summary["torchscript"]["kind"] in ("script", "trace")

    rows = pq.read_table(out / "inference.parquet").to_pandas()
    ok = rows[rows["status"] == "ok"]
    for runtime in ("eager", "torchscript_trace", "onnxruntime"):
        got = ok[(ok["device"] == "cpu") & (ok["runtime"] == runtime)]
        assert sorted(got["batch"]) == [1, 16] and (got["latency_ms"] > 0).all() and (got["images_per_s"] > 0).all()
    compiled = rows[rows["runtime"] == "torch_compile"]
    assert (compiled["status"] == "skipped").all() and compiled["reason"].str.contains("--compile").all()
    assert (ok["max_abs_diff"] < 1e-4).all()

    client = mlflow.MlflowClient(mlflow_server.uri)
    attached = {Path(a.path).name for a in client.list_artifacts(record["parent_run_id"], "export")}
    assert {"model.pt", "model.onnx", "inference.parquet", "export.json", "inference.png"} <= attached
    assert "export_onnx_max_abs_diff" in client.get_run(record["parent_run_id"]).data.metrics


@pytest.mark.integration
def test_registered_model_has_signature_and_predicts_like_the_checkpoint(record, reference, mlflow_server,
                                                                        test_images, tmp_path):
    import mlflow
    from mlflow.models import get_model_info

    version = registered_version(mlflow.MlflowClient(mlflow_server.uri), record["parent_run_id"])
    uri = f"models:/{REGISTERED}/{version}"
    mlflow.set_tracking_uri(mlflow_server.uri)
    info = get_model_info(uri)
    assert info.signature is not None
    assert info.signature.inputs.inputs[0].shape == (-1, 3, 32, 32)
    assert info.signature.outputs.inputs[0].shape == (-1, 10)
    assert info.metadata["input_size"] == 32 and info.metadata["classes"] == [str(c) for c in range(10)]
    model = mlflow.pytorch.load_model(uri)

    images, files = test_images
    batch = torch.from_numpy(images).float() / 255
    with torch.no_grad():
        expected = torch.softmax(reference(batch), dim=1)
        assert torch.equal(model(batch).argmax(1), expected.argmax(1))

    proc = run_module("tuner.predict", uri, *map(str, files), "--top-k", "3", "--json",
                      "--mlflow-uri", mlflow_server.uri, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["input_size"] == 32 and len(result["predictions"]) == len(files)
    for i, (file, got) in enumerate(zip(files, result["predictions"])):
        assert got["image"] == str(file) and len(got["top"]) == 3
        top = expected[i].topk(3)
        assert [t["index"] for t in got["top"]] == top.indices.tolist()
        assert [t["probability"] for t in got["top"]] == pytest.approx(top.values.tolist(), abs=1e-4)
        assert got["top"][0]["class"] == reference.classes[top.indices[0]]

    text = run_module("tuner.predict", uri, str(files[0]), "--mlflow-uri", mlflow_server.uri, cwd=tmp_path)
    assert text.returncode == 0 and text.stdout.count("%") == 3  # top-3 by default, one line per image


@pytest.mark.integration
def test_predict_errors_are_one_line(record, mlflow_server, test_images, tmp_path, capsys):
    _, files = test_images
    (tmp_path / "note.png").write_text("not an image")
    cases = [
        (["models:/whatever/1", str(tmp_path / "missing.png")], "does not exist"),
        (["models:/whatever/1", str(tmp_path / "note.png")], "cannot read image"),
        (["models:/no-such-model/1", str(files[0]), "--mlflow-uri", mlflow_server.uri], "cannot load model"),
        ([f"runs:/{'f' * 32}/model", str(files[0]), "--mlflow-uri", mlflow_server.uri], "cannot load model"),
    ]
    for args, says in cases:
        assert predict.main(args) == 2
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1 and out[0].startswith("error: ") and says in out[0], out


def test_export_bad_input_is_one_line(tmp_path, capsys):
    from tuner import export

    assert export.main([str(tmp_path / "nope")]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    # the wording is tuner.folder's, shared by every command over a sweep folder
    assert len(out) == 1 and out[0].startswith("error: ") and "no sweep at" in out[0] and "nope" in out[0]


UNTRACEABLE_NET = """\
import torch
from torch import nn


class Untraceable(nn.Module):
    \"\"\"Runs eagerly (and under torch.export, so ONNX works) but TorchScript can neither script nor trace it.\"\"\"

    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(3, num_classes)

    def forward(self, x):
        if torch.jit.is_tracing():
            raise RuntimeError("this net refuses to be traced")
        pooled = sum(x[:, c:c + 1].mean((2, 3)) for c in range(3))  # a generator: TorchScript cannot script it
        return self.fc(x.mean((2, 3))) + 0 * pooled


def build(num_classes, image_size):
    return Untraceable(num_classes)


def small(num_classes, image_size):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))
"""


def tiny_sweep(root: Path, models: dict[str, str]) -> Path:
    """A finished sweep folder on disk: one checkpoint per trial (trial id -> model), the first trial the winner."""
    from trainables.classify import CHECKPOINT_FILE
    from trainables.config import TrialConfig
    from trainables.models import create_model
    from tuner.folder import SweepFolder, SweepRecord, SweepState
    from tuner.spec import build_spec

    spec = build_spec(space="resnet_rsb", dataset="digits", storage=str(root / "sweeps"), name="tiny")
    folder = SweepFolder(spec.sweep_dir)
    folder.path.mkdir(parents=True)
    rows = []
    for trial_id, model in models.items():
        cfg = TrialConfig.from_dict({**TrialConfig().to_dict(), "model": model, "image_size": 16})
        net = create_model(model, 10, image_size=16)
        checkpoint = folder.path / "trials" / trial_id
        checkpoint.mkdir(parents=True)
        torch.save({"model": net.state_dict(), "config": cfg.to_dict(), "num_classes": 10, "image_size": 16,
                    "classes": [str(c) for c in range(10)], "mean": [0.5] * 3, "std": [0.25] * 3},
                   checkpoint / CHECKPOINT_FILE)
        rows.append({"trial_id": trial_id, "status": "finished", "best_val_top1": 0.5, "checkpoint": str(checkpoint),
                     **cfg.to_dict()})
    folder.write_trials(rows)
    folder.write_record(SweepRecord(spec, parent_run_id="0" * 32, state=SweepState.COMPLETE,
                                    winner=rows[0]["trial_id"]))
    return folder.path


@pytest.fixture
def user_nets(tmp_path, monkeypatch) -> str:
    return user_module(tmp_path, monkeypatch, "exportnets", UNTRACEABLE_NET)


def export(sweep: Path, *args: str) -> int:
    from tuner import export as export_module

    return export_module.main([str(sweep), "--batch", "4", "--iterations", "3", "--budget", "0.05", "--no-mlflow",
                               *args])


def test_export_says_when_torchscript_is_not_exported(tmp_path, user_nets, capsys):
    sweep = tiny_sweep(tmp_path, {"t0": f"{user_nets}:build"})
    assert export(sweep) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("TorchScript: not exported (scripting failed: " in out and "; tracing failed: RuntimeError: this net "
            "refuses to be traced)" in out), out
    assert f"ONNX: {sweep / 'export' / 'model.onnx'}" in out
    summary = json.loads((sweep / "export" / "export.json").read_text())
    torchscript = summary["torchscript"]
    assert torchscript["file"] is None and "refuses to be traced" in torchscript["trace_unavailable"]
    assert not (sweep / "export" / "model.pt").exists() and (sweep / "export" / "model.onnx").is_file()


def test_exporting_another_trial_keeps_the_winners_export(tmp_path, user_nets, capsys):
    sweep = tiny_sweep(tmp_path, {"t0": f"{user_nets}:small", "t1": f"{user_nets}:small", "t2": f"{user_nets}:small"})
    for trial in (None, "t1", "t2"):
        assert export(sweep, *(["--trial", trial] if trial else [])) == 0
    out = capsys.readouterr().out
    for trial, where in (("t0", sweep / "export"), ("t1", sweep / "export" / "t1"), ("t2", sweep / "export" / "t2")):
        summary = json.loads((where / "export.json").read_text())
        assert summary["trial_id"] == trial and (where / "model.onnx").is_file() and (where / "model.pt").is_file()
        assert f"TorchScript (script): {where / 'model.pt'}" in " ".join(out.split())
    assert export(sweep, "--trial", "t0") == 0  # the winner named by --trial: still export/
    assert json.loads((sweep / "export" / "export.json").read_text())["trial_id"] == "t0"
    assert not (sweep / "export" / "t0").exists()
