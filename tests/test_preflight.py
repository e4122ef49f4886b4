"""What a trial would reject is refused before the sweep starts: an image size a model cannot take (every model x
image size the space can sample, run on a two-image batch), a batch larger than the training split."""

import pytest

from tests.conftest import REPO, run_cli
from trainables.errors import UserError
from tuner.dryrun import preflight_models
from tuner.spec import build_spec


def test_an_image_size_a_model_cannot_take_is_one_line():
    spec = build_spec(space="resnet_rsb", dataset="digits", sets=["model=vgg16_bn", "image_size=16", "width=0.25"])
    with pytest.raises(UserError, match=r"model vgg16_bn cannot take 16px images \(RuntimeError: .*too small"):
        preflight_models(spec, 10, 32)


def test_every_sampled_model_and_size_is_run():
    spec = build_spec(space="cnn_grid", dataset="digits")  # cnn_basic, resnet18, vit_scratch at 16 px
    preflight_models(spec, 10, 32)


@pytest.mark.integration
def test_cli_refuses_before_anything_runs(tmp_path):
    """Both checks through the command line: one error line, exit 2, no sweep folder, no trial started."""
    for sets, needle in ((["model=cnn_basic", "image_size=4"], "model cnn_basic cannot take 4px images"),
                         (["model=cnn_basic", "width=0.25", "batch_size=4096"],
                          "batch_size 4096 exceeds the 1293 training images")):
        args = [arg for s in sets for arg in ("--set", s)]
        proc = run_cli("--space", "resnet_rsb", "--dataset", "digits", *args, "--num-samples", "1",
                       "--storage", str(tmp_path / "s"), "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}",
                       cwd=REPO, timeout=300)
        out = " ".join(proc.stdout.split())
        assert proc.returncode == 2 and f"error: {needle}" in out, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
        assert not list(tmp_path.glob("s/*/sweep.json"))
