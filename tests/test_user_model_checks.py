"""A user's `module:factory` model takes one real training step on the driver before any trial starts: a forward
and backward pass on two images at the config's size. Output that is not one (B, num_classes) tensor of logits, an
exception in forward or backward, or a loss that reaches no parameter is each one `error:` line naming the model."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import user_module
from trainables.errors import UserError
from tuner.dryrun import preflight_models
from tuner.spec import build_spec

USER_NETS = """\
import torch
from torch import nn


def _cnn(num_classes):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, num_classes))


def good(num_classes, image_size):
    return _cnn(num_classes)


def five_logits(num_classes, image_size):
    return _cnn(5)


class Pair(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.net = _cnn(num_classes)

    def forward(self, x):
        out = self.net(x)
        return out, out.detach()


def pair(num_classes, image_size):
    return Pair(num_classes)


class Named(Pair):
    def forward(self, x):
        return {"logits": self.net(x)}


def named(num_classes, image_size):
    return Named(num_classes)


def unpooled(num_classes, image_size):
    return nn.Sequential(nn.Conv2d(3, num_classes, 3, padding=1), nn.Linear(image_size, num_classes))


def headless(num_classes, image_size):
    return nn.Sequential(nn.Conv2d(3, num_classes, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


class Fixed32(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, num_classes)

    def forward(self, x):
        return self.fc(x.reshape(len(x), 3 * 32 * 32))


def fixed32(num_classes, image_size):
    return Fixed32(num_classes)


class Detached(Pair):
    def forward(self, x):
        with torch.no_grad():
            return self.net(x)


def detached(num_classes, image_size):
    return Detached(num_classes)


class BadBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("this op has no gradient")


class NoGradient(Pair):
    def forward(self, x):
        return BadBackward.apply(self.net(x))


def no_gradient(num_classes, image_size):
    return NoGradient(num_classes)


class Frozen(Pair):
    def __init__(self, num_classes):
        super().__init__(num_classes)
        self.net.requires_grad_(False)

    def forward(self, x):
        return self.net(x)


def frozen(num_classes, image_size):
    return Frozen(num_classes)


class Constant(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.unused = nn.Linear(1, 1)
        self.num_classes = num_classes

    def forward(self, x):
        return x.mean((1, 2, 3))[:, None].expand(-1, self.num_classes) * 1.0


def constant(num_classes, image_size):
    return Constant(num_classes)
"""


@pytest.fixture
def user_nets(tmp_path, monkeypatch) -> str:
    """A module `checknets` of the user's own, importable for this test only."""
    return user_module(tmp_path, monkeypatch, "checknets", USER_NETS)


def preflight(model: str, image_size: int = 16, num_classes: int = 10) -> None:
    spec = build_spec(space="resnet_rsb", dataset="digits", sets=[f"model={model}", f"image_size={image_size}"])
    preflight_models(spec, num_classes, 32)


def test_a_good_user_model_passes(user_nets):
    preflight(f"{user_nets}:good")


@pytest.mark.parametrize("factory,needle", [
    ("five_logits", "model 'checknets:five_logits' returned logits of shape (2, 5) for 10 classes; its factory gets "
                    "num_classes=10 and must build a head of that size"),
    ("pair", "model 'checknets:pair' returned a tuple, not a tensor of logits; its forward must return one tensor "
             "of shape (B, 10)"),
    ("named", "model 'checknets:named' returned a dict, not a tensor of logits"),
    ("unpooled", "model 'checknets:unpooled' returned a float32 tensor of shape (2, 10, 16, 10) for a batch of 2; "
                 "its forward must return float logits of shape (2, 10)"),
    ("headless", "model 'checknets:headless': cannot tell its classifier head (it has no nn.Linear layer"),
    ("fixed32", "model 'checknets:fixed32' failed on a batch of 2 images of shape (2, 3, 16, 16) (RuntimeError: "),
    ("detached", "model 'checknets:detached': the loss reached none of its 6 trainable parameter tensor(s)"),
    ("constant", "model 'checknets:constant': the loss reached none of its 2 trainable parameter tensor(s)"),
    ("no_gradient", "model 'checknets:no_gradient': the backward pass of one training step failed (RuntimeError: "
                    "this op has no gradient)"),
    ("frozen", "model 'checknets:frozen' has no trainable parameters"),
])
def test_a_user_model_that_cannot_train_is_one_line(user_nets, factory, needle):
    with pytest.raises(UserError) as caught:
        preflight(f"{user_nets}:{factory}")
    message = str(caught.value)
    assert needle in message and "\n" not in message, message


def test_the_step_runs_at_the_configs_image_size(user_nets):
    preflight(f"{user_nets}:fixed32", image_size=32)  # takes only 32 px: fine at 32, refused at 16 above


def test_the_cli_says_it_in_one_line_before_anything_runs(user_nets, tmp_path, capsys):
    from tuner.run import EXIT_USER_ERROR, main

    code = main(["--space", "resnet_rsb", "--dataset", "digits", "--set", f"model={user_nets}:five_logits",
                 "--storage", str(tmp_path / "sweeps"), "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    out = capsys.readouterr().out.strip()
    assert code == EXIT_USER_ERROR and len(out.splitlines()) == 1, out
    assert out.startswith("error: model 'checknets:five_logits' returned logits of shape (2, 5) for 10 classes")
    assert not (tmp_path / "sweeps").exists()


def test_dry_run_checks_a_user_model_too(user_nets):
    from rich.console import Console

    from tuner.dryrun import dry_run

    spec = build_spec(space="resnet_rsb", dataset="digits", sets=[f"model={user_nets}:pair", "image_size=16"])
    with pytest.raises(UserError, match="returned a tuple, not a tensor of logits"):
        dry_run(spec, Console(width=200), samples=1)
    good = build_spec(space="resnet_rsb", dataset="digits", sets=[f"model={user_nets}:good", "image_size=16"])
    rows = dry_run(good, Console(width=200), samples=1)
    assert rows and rows[0]["parameters"] > 0


def test_built_in_models_are_only_run_forward(monkeypatch):
    """Big built-in nets are known to train: the check on every sweep's start stays a no-grad forward pass."""
    import torch

    calls = []
    monkeypatch.setattr(torch.Tensor, "backward", lambda *a, **k: calls.append(a))
    preflight("cnn_basic")
    assert calls == []



NET = "from torch import nn\n\n\ndef build(num_classes, image_size):\n    return nn.Linear(3, num_classes)\n"


def test_a_namespace_package_is_shipped_to_the_workers(tmp_path, monkeypatch):
    """mypkg/nets.py without mypkg/__init__.py imports on the driver; its folder(s) must reach Ray's workers too."""
    from tuner import experiment

    (tmp_path / "a" / "nsnets").mkdir(parents=True)
    (tmp_path / "a" / "nsnets" / "nets.py").write_text(NET)
    (tmp_path / "b" / "nsnets").mkdir(parents=True)  # a second part of the same namespace package, elsewhere
    (tmp_path / "b" / "nsnets" / "more.py").write_text(NET)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "flatnet.py").write_text(NET)
    for part in ("a", "b", "c"):
        monkeypatch.syspath_prepend(str(tmp_path / part))
    for name in ("nsnets", "nsnets.nets", "nsnets.more", "flatnet"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    spec = build_spec(space="resnet_rsb", dataset="digits", storage=str(tmp_path / "s"),
                      sets=["model=nsnets.nets:build"])
    assert experiment.runtime_env(spec) == {"py_modules": [str(tmp_path / "a" / "nsnets"),
                                                           str(tmp_path / "b" / "nsnets")]}
    flat = build_spec(space="resnet_rsb", dataset="digits", storage=str(tmp_path / "s"), sets=["model=flatnet:build"])
    assert experiment.runtime_env(flat) == {"py_modules": [str(tmp_path / "c" / "flatnet.py")]}
