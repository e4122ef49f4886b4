"""tuner.report: the pure parts (importance, rungs, distributions), Optuna's figures of the rebuilt study, the report
on made-up sweep folders (with and without final.parquet and epochs.parquet, one model family or several), bad input,
MLflow unreachable, and the report of a real digits sweep. tests/test_report_browser.py opens them in Chromium."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
import struct
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests._digits_sweep import digits_sweep, run_module
from tests.conftest import free_port
from tuner import folder as sweep_folder
from tuner.report import analysis, build_report, figures
from tuner.report.__main__ import main as report_main
from tuner.report.plotting import DPI, MAX_WIDTH_IN
from tuner.results import COMPLETED

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------------------------
# helpers


class Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs).get("src", ""))


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def embedded_pngs(html_file: Path) -> list[bytes]:
    parser = Images()
    parser.feed(html_file.read_text())
    out = []
    for src in parser.sources:
        assert src.startswith("data:image/png;base64,"), src[:60]  # self-contained: nothing fetched
        out.append(base64.b64decode(src.split(",", 1)[1], validate=True))
    return out


def check_report_files(out: Path) -> list[Path]:
    """Every PNG non-empty and readable; the HTML embeds each one; the Markdown references each one."""
    pngs = sorted(out.glob("*.png"))
    assert pngs
    for png in pngs:
        width, height = png_size(png.read_bytes())
        assert width > 200 and height > 150, png
    embedded = embedded_pngs(out / "report.html")
    assert sorted(embedded) == sorted(p.read_bytes() for p in pngs)
    referenced = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (out / "report.md").read_text())
    assert sorted(referenced) == sorted(p.name for p in pngs)
    return pngs


def trials_frame(n: int = 12, families=("cnn_basic", "resnet18", "vit_scratch"), seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    statuses = ["finished", "stopped", "stopped", "early_stopped", "failed", "finished"]
    rows = []
    for i in range(n):
        status = statuses[i % len(statuses)]
        lr = float(10 ** rng.uniform(-4, -2))
        rows.append({"trial_id": f"t{i:02d}", "status": status, "epochs": 4 if status == "finished" else 1 + i % 3,
                     "best_val_top1": math.nan if status == "failed" else float(20 + 70 * rng.random()),
                     "last_val_top1": 50.0, "last_val_loss": 1.0, "images_per_s": 1000.0,
                     "wall_s": float(5 + i), "node_id": "n", "checkpoint": f"/x/t{i}",
                     "error": "boom" if status == "failed" else None, "model": families[i % len(families)],
                     "lr": lr, "weight_decay": float(10 ** rng.uniform(-5, -2)),
                     "opt": ["adamw", "sgd"][i % 2], "hflip": bool(i % 3), "warmup_epochs": float(i % 2),
                     "batch_size": 32, "max_epochs": 4})
    return pd.DataFrame(rows)


def epochs_frame(trials: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for t in trials.itertuples():
        for epoch in range(1, int(t.epochs) + 1):
            rows.append({"trial_id": t.trial_id, "epoch": epoch, "train_loss": 2.0 / epoch, "val_loss": 1.5 / epoch,
                         "val_top1": (t.best_val_top1 if not math.isnan(t.best_val_top1) else 10) * epoch / t.epochs,
                         "val_top5": 90.0, "lr": 1e-3, "images_per_s": 1000.0, "epoch_s": 1.0,
                         "time_total_s": float(epoch)})
    return pd.DataFrame(rows)


def write_sweep(root: Path, *, with_epochs: bool = True, with_final: bool = False,
                tracking_uri: str | None = None) -> Path:
    folder = root / "made-up"
    folder.mkdir(parents=True)
    trials = trials_frame()
    pq.write_table(pa.Table.from_pandas(trials, preserve_index=False), folder / "trials.parquet")
    if with_epochs:
        pq.write_table(pa.Table.from_pandas(epochs_frame(trials), preserve_index=False), folder / "epochs.parquet")
    winner = trials.sort_values("best_val_top1", ascending=False).iloc[0]
    (folder / "sweep.json").write_text(json.dumps({
        "spec": {"space": "resnet_rsb", "dataset": "digits", "num_samples": 12, "max_epochs": 4, "name": "made-up",
                 "overrides": {"batch_size": 32}},
        "parent_run_id": "0" * 32, "tracking_uri": tracking_uri, "completed": True,
        "winner": winner["trial_id"], "model_uri": "models:/resnet_rsb-digits/1",
        "test": {"top1": 88.5, "top5": 99.0, "loss": 0.4, "images": 360}}))
    if with_final:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = []
        for family in ("cnn_basic", "resnet18"):
            fig, ax = plt.subplots(figsize=(4, 4))
            ax.imshow(np.eye(10))
            ax.set_title(f"confusion {family}")
            fig.savefig(folder / f"confusion-{family}.png")
            plt.close(fig)
            rows.append({"family": family, "trial_id": "t00", "model": family, "checkpoint": "/x", "val_top1": 90.0,
                         "test_top1": 89.0, "test_top5": 99.0, "test_loss": 0.3, "test_images": 360,
                         "per_class_top1": [float(90 + c % 5) for c in range(10)],
                         "classes": [str(c) for c in range(10)], "confusion_png": f"confusion-{family}.png",
                         "seeds": 3, "val_top1_mean": 89.0, "val_top1_std": 0.5, "test_top1_mean": 88.0,
                         "test_top1_std": 0.7})
        pq.write_table(pa.Table.from_pylist(rows), folder / "final.parquet")
    return folder


# ---------------------------------------------------------------------------------------------------------------
# pure parts


def test_searched_params_are_the_keys_that_vary():
    assert analysis.searched_params(trials_frame()) == ["model", "opt", "lr", "weight_decay", "warmup_epochs",
                                                      "hflip"]


def test_distributions_inferred_from_values():
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    trials = trials_frame()
    lr = analysis.distribution_of("lr", trials["lr"])
    assert isinstance(lr, FloatDistribution) and lr.log and lr.low == trials["lr"].min()
    assert not analysis.distribution_of("warmup_epochs", trials["warmup_epochs"]).log
    opt = analysis.distribution_of("opt", trials["opt"])
    assert isinstance(opt, CategoricalDistribution) and opt.choices == ("adamw", "sgd")
    assert analysis.distribution_of("hflip", trials["hflip"]).choices == (False, True)


def test_importance_of_searched_params_sums_to_one():
    result = analysis.param_importance(trials_frame(n=24))
    assert not result.reason and result.trials == 20  # failed trials do not count
    assert set(result.values) == {"model", "opt", "lr", "weight_decay", "warmup_epochs", "hflip"}
    assert sum(result.values.values()) == pytest.approx(1.0)


def test_importance_with_constant_params_says_why():
    trials = trials_frame()
    for key in ("model", "opt", "weight_decay", "warmup_epochs", "hflip"):
        trials[key] = trials[key].iloc[0]  # only lr varies
    result = analysis.param_importance(trials)
    assert result.values == {} and "two or more" in result.reason and "(lr)" in result.reason
    trials["lr"] = 1e-3  # nothing varies
    assert "0 varied" in analysis.param_importance(trials).reason


def test_importance_with_too_few_trials_or_a_flat_objective_says_why():
    trials = trials_frame()
    few = analysis.param_importance(trials[trials["status"] != "failed"].head(3))
    assert few.values == {} and "at least" in few.reason
    flat = trials.assign(best_val_top1=50.0)
    result = analysis.param_importance(flat)
    assert result.values == {} and "same validation top-1" in result.reason


def test_rung_survival_counts_trials_reaching_each_epoch():
    trials = pd.DataFrame({"trial_id": ["a", "b", "c", "d"], "epochs": [4, 1, 2, 0]})
    epochs = pd.DataFrame({"trial_id": ["a"] * 4 + ["b", "c", "c"], "epoch": [1, 2, 3, 4, 1, 1, 2]})
    assert analysis.rung_survival(epochs, trials) == [(1, 3), (2, 2), (3, 1), (4, 1)]
    assert analysis.rung_survival(None, trials) == [(1, 3), (2, 2), (3, 1), (4, 1)]  # older sweeps: trials' epochs
    assert analysis.rung_survival(None, trials.assign(epochs=0)) == []


def test_asha_rungs_match_ray_milestones():
    assert analysis.asha_rungs(1, 2, 3) == [1, 2]
    assert analysis.asha_rungs(1, 2, 4) == [1, 2]  # a rung at max_t would be the end anyway
    assert analysis.asha_rungs(1, 3, 100) == [1, 3, 9, 27, 81]
    assert analysis.asha_rungs(5, 2, 5) == []


def test_parallel_axis_encoding():
    """Optuna draws the axes of the rebuilt study: lr (a LOG_SCALE key) on a log axis spanning the values tried,
    categories as evenly spaced ticks."""
    trials = pd.DataFrame({"trial_id": ["a", "b", "c"], "status": "finished", "best_val_top1": [10.0, 50.0, 90.0],
                           "lr": [1e-4, 1e-3, 1e-2], "opt": ["sgd", "adamw", "sgd"]})
    study = analysis.study_of(trials, ["lr", "opt"])
    fig = figures.draw_parallel(study, ["lr", "opt"])
    names = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert names[1:] == ["lr", "opt"]  # the first axis is the objective
    lr_axis, opt_axis = fig.axes[2], fig.axes[3]  # fig.axes[1] is the colour bar
    assert lr_axis.get_yscale() == "log" and lr_axis.get_ylim() == pytest.approx((1e-4, 1e-2))
    # categories evenly spaced, in the order trials (by trial id) first tried them: Optuna's choice
    assert [t.get_text() for t in opt_axis.get_yticklabels()] == ["sgd", "adamw"]
    assert list(opt_axis.get_yticks()) == [0, 1]
    assert fig.get_size_inches()[0] <= MAX_WIDTH_IN


def test_parallel_coordinates_keep_the_most_important_axes():
    importance = analysis.param_importance(trials_frame(n=24))
    params = list(importance.values)
    assert figures.parallel_params(params, importance, limit=3) == params[:3]  # importance order, best first
    assert figures.parallel_params(params[:2], importance, limit=3) == params[:2]


def test_learning_curves_have_one_loss_panel_per_loss_kind():
    trials = trials_frame().assign(loss=["ce", "bce"] * 6)
    assert analysis.loss_kinds(trials) == {"ce": list(trials["trial_id"][::2]), "bce": list(trials["trial_id"][1::2])}
    fig = figures.draw_learning_curves(trials, epochs_frame(trials))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["validation top-1", "training loss (CE trials)", "training loss (BCE trials)"]
    one_kind = figures.draw_learning_curves(trials.assign(loss="ce"), epochs_frame(trials))
    assert [ax.get_title() for ax in one_kind.axes] == ["validation top-1", "training loss (CE trials)"]


# ---------------------------------------------------------------------------------------------------------------
# the report on made-up sweep folders


def test_report_with_final_parquet(tmp_path):
    folder = write_sweep(tmp_path, with_final=True)
    made = build_report(sweep_folder.load(folder))
    pngs = check_report_files(folder / "report")
    names = {p.name for p in pngs}
    assert {"learning_curves.png", "family_best5.png", "parallel_coordinates.png", "param_importance.png",
            "rung_survival.png", "status_wall_time.png", "confusion-cnn_basic.png",
            "confusion-resnet18.png"} <= names
    assert made.notes == {}
    # every field is one build_report fills: how attaching went is attach()'s return, never a field left unset
    assert [f.name for f in dataclasses.fields(made)] == ["html", "markdown", "figures", "notes"]
    text = (folder / "report" / "report.md").read_text()
    assert "Test results (each model family's best trial" in text and "88.00 ± 0.70" in text
    assert "Per-class test top-1" in text


def test_report_of_an_older_sweep_without_epochs_or_final(tmp_path):
    folder = write_sweep(tmp_path, with_epochs=False)
    made = build_report(sweep_folder.load(folder))
    check_report_files(folder / "report")
    assert "curves" in made.notes and not (folder / "report" / "learning_curves.png").exists()
    assert (folder / "report" / "rung_survival.png").exists()  # from trials.parquet's epochs
    text = (folder / "report" / "report.md").read_text()
    assert "No figure: no epochs.parquet" in text and "Test results (the winner, tested once)" in text


def test_a_one_family_sweep_has_no_family_figure_and_says_why(tmp_path):
    folder = write_sweep(tmp_path)
    trials = pq.read_table(folder / "trials.parquet").to_pandas().assign(model="cnn_basic")
    pq.write_table(pa.Table.from_pandas(trials, preserve_index=False), folder / "trials.parquet")
    made = build_report(sweep_folder.load(folder))
    check_report_files(folder / "report")
    assert set(made.notes) == {"families"} and "one model family (cnn_basic)" in made.notes["families"]
    assert not (folder / "report" / "family_best5.png").exists()
    assert "## Best trials per model family\n\nNo figure: every scored trial is one model family" in \
        (folder / "report" / "report.md").read_text()


def test_figures_are_drawn_at_the_size_they_are_shown(tmp_path):
    """No figure wider than the report's column at the house DPI: the page never scales one (and its text) down."""
    folder = write_sweep(tmp_path, with_final=True)
    build_report(sweep_folder.load(folder))
    for png in (folder / "report").glob("*.png"):
        if not png.name.startswith("confusion-"):  # tuner.final draws those
            assert png_size(png.read_bytes())[0] <= MAX_WIDTH_IN * DPI * 1.1, png.name


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    # the wording is tuner.folder's, shared by every command over a sweep folder
    for path, says in ((tmp_path / "nope", "no sweep at"), (tmp_path, "not a sweep folder")):
        assert report_main([str(path)]) == 2
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1 and out[0].startswith("error: ") and says in out[0]
    folder = write_sweep(tmp_path / "torn")
    (folder / "trials.parquet").write_bytes(b"PAR1 not really")
    assert report_main([str(folder)]) == 2
    assert "unreadable" in capsys.readouterr().out


def test_unreachable_mlflow_is_a_warning_and_the_report_is_written(tmp_path, capsys):
    folder = write_sweep(tmp_path, tracking_uri=f"http://127.0.0.1:{free_port()}")
    assert report_main([str(folder)]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "could not attach" in warnings[0]
    assert (folder / "report" / "report.html").stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------------------------
# a real sweep


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, mlflow_server) -> Path:
    return digits_sweep(tmp_path_factory, mlflow_server)


@pytest.mark.integration
def test_report_of_a_real_sweep_attached_to_mlflow(sweep_dir, mlflow_server):
    import mlflow

    proc = run_module("tuner.report", str(sweep_dir), cwd=sweep_dir.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "attached to MLflow run" in proc.stdout
    out = sweep_dir / "report"
    pngs = {p.name for p in check_report_files(out)}
    trials = pq.read_table(sweep_dir / "trials.parquet").to_pandas()
    # 4 trials of resnet_rsb's searched recipe, every one completed (stopped by ASHA counts): importance is computed
    assert len(trials) == 4 and trials["status"].isin([s.value for s in COMPLETED]).all(), trials[["status", "error"]]
    assert {"learning_curves.png", "parallel_coordinates.png", "param_importance.png", "slices.png",
            "rung_survival.png", "status_wall_time.png", "confusion-cnn_basic.png"} == pngs
    text = (out / "report.md").read_text()
    # --set model=cnn_basic: one family, so no family figure, and the report says why
    assert "family_best5.png" not in pngs and "one model family (cnn_basic)" in text
    assert all(t in text for t in trials["trial_id"])  # the leaderboard lists every trial (4 < 10)
    assert (sweep_dir / "final.parquet").exists()  # a sweep tests each family's best once
    assert "Test results (each model family's best trial, tested once)" in text

    record = json.loads((sweep_dir / "sweep.json").read_text())
    client = mlflow.MlflowClient(mlflow_server.uri)
    attached = {Path(a.path).name for a in client.list_artifacts(record["parent_run_id"], "report")}
    assert pngs | {"report.html", "report.md"} <= attached


# ---------------------------------------------------------------------------------------------------------------
# the registered winner the report and tuner.predict point at (tuner.registry), on a local SQLite store: no server


def test_the_registered_winner_has_its_version_alias_tags_and_description_and_returns_probabilities(tmp_path):
    import mlflow
    import torch

    from trainables.classify import ImageClassifier
    from tuner.registry import ALIAS, register_winner

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("digits-test", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment).info.run_id
    runs = {t: client.create_run(experiment, tags={"mlflow.parentRunId": parent, "trial_id": t}).info.run_id
            for t in ("t1", "t2")}
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    model = ImageClassifier(net, [0.5] * 3, [0.25] * 3, 8, ["a", "b", "c", "d"]).eval()
    example = torch.rand(2, 3, 8, 8).numpy()
    winner = {"trial_id": "t1", "model": "cnn_basic", "best_val_top1": 91.5, "lr": 0.01}
    previous = mlflow.get_tracking_uri()
    try:
        def register(row):
            return register_winner(uri, parent, row, ["lr"], model, {"test_top1": 90.25, "test_top5": 99.0},
                                   name="space-digits", space="space", dataset="digits", input_example=example)

        assert register(winner) == "models:/space-digits/1"
        assert register(winner) == "models:/space-digits/1"  # a resumed publish finds its version again
        version = client.get_model_version_by_alias("space-digits", ALIAS)
        assert ALIAS == "champion" and str(version.version) == "1" and version.run_id == runs["t1"]
        assert {k: version.tags[k] for k in ("space", "dataset", "trial_id", "model", "val_top1", "test_top1",
                                            "outputs", "sweep.parent_run_id")} == {
            "space": "space", "dataset": "digits", "trial_id": "t1", "model": "cnn_basic", "val_top1": "91.50",
            "test_top1": "90.25", "outputs": "probabilities", "sweep.parent_run_id": parent}
        assert "tested once (top-1 90.25)" in version.description and "probabilities" in version.description
        assert client.get_run(runs["t1"]).data.tags["sweep.winner"] == "true"

        batch = torch.rand(5, 3, 8, 8).numpy()
        probs = np.asarray(mlflow.pyfunc.load_model(f"models:/space-digits@{ALIAS}").predict(batch))
        assert probs.shape == (5, 4) and (probs >= 0).all()
        assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)

        assert register({**winner, "trial_id": "t2"}) == "models:/space-digits/2"  # the next sweep's winner
        assert str(client.get_model_version_by_alias("space-digits", ALIAS).version) == "2"  # the alias moves to it
    finally:
        mlflow.set_tracking_uri(previous)
