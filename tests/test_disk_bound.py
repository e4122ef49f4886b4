"""The sweep folder stays bounded: each trial keeps its KEEP_CHECKPOINTS best checkpoints (by validation top-1)
plus its latest (Ray Tune never deletes the latest: a retried trial resumes from it), however many epochs it ran;
checkpoint files are written whole (no `.tmp` left behind)."""

import json

import pytest
from ray import tune

from search_spaces import SPACES, SearchSpace
from tuner.run import main
from tuner.experiment import KEEP_CHECKPOINTS

pytestmark = pytest.mark.integration

EPOCHS = 6


def test_checkpoints_per_trial_are_bounded(tmp_path, capsys, monkeypatch):
    space = SearchSpace(
        name="disk_probe", description="6 trials of 6 epochs, no early stopping", reproduces="-", dataset="digits",
        fixed={"model": "cnn_basic", "width": 0.25, "image_size": 16, "batch_size": 64, "opt": "sgd",
               "sched": "constant", "weight_decay": 0.0},
        params={"lr": tune.loguniform(1e-3, 0.3)}, search="random", asha=None, num_samples=6, max_epochs=EPOCHS)
    monkeypatch.setitem(SPACES, space.name, space)
    code = main(["--space", space.name, "--storage", str(tmp_path / "sweeps"), "--name", "bound",
                 "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert code == 0, capsys.readouterr().out
    trials = sorted((tmp_path / "sweeps" / "bound").glob("trial_*"))
    assert len(trials) == 6
    sizes = []
    for trial in trials:
        results = [json.loads(line) for line in (trial / "result.json").read_text().splitlines() if line.strip()]
        assert [r["epoch"] for r in results] == list(range(1, EPOCHS + 1))  # a checkpoint every epoch ...
        kept = sorted(trial.glob("checkpoint_*"))
        assert 1 <= len(kept) <= KEEP_CHECKPOINTS + 1, kept  # ... of which at most K best + the latest remain
        index = [int(c.name.removeprefix("checkpoint_")) for c in kept]
        assert index[-1] == EPOCHS - 1  # the latest is kept
        val = [r["val_top1"] for r in results]
        assert max(val[i] for i in index) == max(val)  # so is the best
        assert all(sorted(p.name for p in c.iterdir()) == ["checkpoint.pt"] for c in kept)  # no torn .tmp
        sizes.append(sum(p.stat().st_size for c in kept for p in c.iterdir()))
    print(f"\ncheckpoints kept per trial: {KEEP_CHECKPOINTS} best + latest at most; "
          f"{max(sizes) / 1e3:.0f} kB largest trial")
