"""The training loop without Ray: it learns, its metrics agree with scikit-learn, and resume is exact."""

import pytest
import torch
from sklearn.metrics import log_loss, top_k_accuracy_score

from trainables.augment import BatchAugment
from trainables.classify import evaluate, train_epochs
from trainables.config import TrialConfig
from trainables.data import load_dataset

FAST = dict(model="cnn_basic", width=0.5, image_size=16, batch_size=32, opt="adamw", lr=3e-3, weight_decay=0.01)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_learns_digits(digits):
    history = [m for m, _ in train_epochs(TrialConfig.from_dict({**FAST, "max_epochs": 3}), digits)]
    assert [m["epoch"] for m in history] == [1, 2, 3]
    assert history[-1]["val_top1"] > 60  # chance is 10
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(m["images_per_s"] > 0 and m["epoch_s"] > 0 and not m["diverged"] for m in history)


def test_evaluate_agrees_with_sklearn():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 7))
    x = torch.randint(0, 256, (300, 3, 4, 4), dtype=torch.uint8)
    y = torch.randint(0, 7, (300,))
    prep = BatchAugment((0.5,) * 3, (0.25,) * 3)
    ours = evaluate(net, x, y, prep, batch_size=64)
    with torch.no_grad():
        logits = net(prep.normalize(x)).numpy()
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    labels = list(range(7))
    assert ours["top1"] == pytest.approx(100 * top_k_accuracy_score(y, logits, k=1, labels=labels), abs=1e-4)
    assert ours["top5"] == pytest.approx(100 * top_k_accuracy_score(y, logits, k=5, labels=labels), abs=1e-4)
    assert ours["loss"] == pytest.approx(log_loss(y, probs, labels=labels), rel=1e-4)


def test_evaluate_builds_no_autograd_graph():
    """Validation runs every epoch: it must not record the graph a backward pass would need."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 7))
    recorded = []
    net.register_forward_hook(lambda module, inputs, output: recorded.append(output.requires_grad))
    evaluate(net, torch.randint(0, 256, (100, 3, 4, 4), dtype=torch.uint8), torch.randint(0, 7, (100,)),
             BatchAugment((0.5,) * 3, (0.25,) * 3), batch_size=64)
    assert recorded == [False, False]


def test_resume_from_checkpoint_state_continues_exactly(digits):
    cfg = TrialConfig.from_dict({**FAST, "max_epochs": 2, "mixup_alpha": 0.2, "cutmix_alpha": 1.0})
    straight = [m for m, _ in train_epochs(cfg, digits)]
    first_epoch = train_epochs(cfg, digits)
    metrics, state_fn = next(first_epoch)
    state = state_fn()
    state = {k: (v if k != "model" else {n: t.clone() for n, t in v.items()}) for k, v in state.items()}
    resumed = [m for m, _ in train_epochs(cfg, digits, resume_from=state)]
    assert [m["epoch"] for m in resumed] == [2]
    assert resumed[0]["val_top1"] == pytest.approx(straight[1]["val_top1"])
    assert resumed[0]["train_loss"] == pytest.approx(straight[1]["train_loss"], rel=1e-5)


def test_non_finite_loss_stops_the_trial(digits):
    cfg = TrialConfig.from_dict({**FAST, "max_epochs": 3, "lr": 10.0, "opt": "sgd", "momentum": 0.0,
                                 "weight_decay": 0.0})
    poisoned = digits.__class__(**{**digits.__dict__, "mean": (float("nan"),) * 3})  # NaN inputs -> NaN loss
    history = [m for m, _ in train_epochs(cfg, poisoned)]
    assert history[-1]["diverged"] and len(history) == 1
