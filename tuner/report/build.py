"""build_report(sweep): the sections of one sweep's report, its figures drawn, both files written."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tuner.folder import REPORT_DIR, Sweep
import tuner.report.analysis as analysis
import tuner.report.figures as figures
import tuner.report.pareto as pareto
import tuner.report.render as render
import tuner.report.tables as tables
from tuner.report.figures import Figure
from tuner.report.plotting import save
from tuner.report.render import Section

HTML_FILE, MARKDOWN_FILE = "report.html", "report.md"
ROUGH_BELOW = 20  # completed trials under which the importance ranking is called rough


@dataclass
class Report:
    """The files build_report wrote (attaching them to MLflow is publish.attach's, which says how it went)."""

    html: Path
    markdown: Path
    figures: list[Figure]
    notes: dict[str, str]  # section key -> why it has no figure


class _Figures:
    """Saves each drawn figure into the report folder, or records why a section has none."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.made: list[Figure] = []
        self.notes: dict[str, str] = {}

    def section(self, key: str, title: str, drawn, file: str, caption: str, why_not: str) -> Section:
        section = Section(key, title)
        if drawn is None:
            self.notes[key] = why_not
            return section.note(f"No figure: {why_not}")
        figure = Figure(key, title, save(drawn, self.out / file), caption)
        self.made.append(figure)
        return section.figure(figure)


def build_report(sweep: Sweep, out_dir: Path | None = None) -> Report:
    """Write report.html, report.md and the PNGs into STORAGE/NAME/report/ (or out_dir)."""
    out = Path(out_dir) if out_dir else sweep.path / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.png"), out / HTML_FILE, out / MARKDOWN_FILE]:  # this folder is ours: no stale figures
        old.unlink(missing_ok=True)
    trials = sweep.frames.trials
    params = analysis.searched_params(trials, analysis.spec_searched_keys(sweep.spec))
    importance = analysis.param_importance(trials, params)
    drawn = _Figures(out)
    sections = [Section("leaderboard", "Leaderboard").table(tables.leaderboard(sweep, params)),
                *_training_sections(sweep, drawn),
                *_search_sections(sweep, params, importance, drawn),
                *_outcome_sections(sweep, drawn),
                _test_section(sweep, drawn)]
    if sweep.spec.multi_objective:  # accuracy under a budget: right after the leaderboard
        sections.insert(1, drawn.section(
            "pareto", "Accuracy vs deployment cost: the Pareto front", pareto.draw_front(sweep.trials, sweep.spec),
            "pareto_front.png", "Best validation top-1 against each measured cost (median of repeated timed runs "
            "after a warm-up, per footprint, before any training); the front joins the non-dominated feasible "
            "trials; dashed lines are the constraints; red ticks on the cost axis are configs over a cost budget, "
            "never trained.", "no trial was trained").table(pareto.front_table(sweep.trials, sweep.spec)))
    stages = tables.stages_table(sweep)
    if stages is not None:
        sections.append(Section("stages", "Stage 2: each family fine-tuned from its best").table(stages))
    context = tables.context(sweep, params)
    html_file, md_file = out / HTML_FILE, out / MARKDOWN_FILE
    html_file.write_text(render.render_html(sweep.name, context, sections))
    md_file.write_text(render.render_markdown(sweep.name, context, sections))
    return Report(html_file, md_file, drawn.made, drawn.notes)


def _training_sections(sweep: Sweep, drawn: _Figures) -> list[Section]:
    trials, epochs = sweep.frames.trials, sweep.frames.epochs
    families = analysis.families(trials)
    return [
        drawn.section("curves", "Learning curves", figures.draw_learning_curves(trials, epochs),
                      "learning_curves.png",
                      f"Validation top-1 and training loss per epoch of the best trials (at most "
                      f"{figures.CURVE_TRIALS}); each "
                      "kind of training loss (the loss key: CE, BCE) has its own panel, as their scales differ.",
                      "no epochs.parquet in this sweep folder (sweeps made before it existed)" if epochs is None
                      else "no epoch was reported"),
        drawn.section("families", "Best trials per model family", figures.draw_family_best(trials),
                      "family_best5.png", f"The best {figures.FAMILY_TOP} trials of each model family by validation "
                      "top-1.",
                      f"every scored trial is one model family ({families[0]}): there is nothing to compare it with; "
                      "the leaderboard ranks its trials" if len(families) == 1 else "no trial has a validation figure"),
    ]


def _search_sections(sweep: Sweep, params: list[str], importance: analysis.Importance,
                     drawn: _Figures) -> list[Section]:
    study = analysis.study_of(sweep.frames.trials, params)
    few = "nothing was searched (every config key had one value)" if not params else "fewer than two completed trials"
    axes = figures.parallel_params(params, importance)
    shown = "" if len(axes) == len(params) else (f" Shown: the {len(axes)} most important of the {len(params)} "
                                                 "searched parameters.")
    slices = figures.parallel_params(params, importance, figures.SLICE_PARAMS)
    rough = "; with this few trials the ranking is rough." if importance.trials < ROUGH_BELOW else "."
    return [
        drawn.section("parallel", "Searched parameters vs validation top-1", figures.draw_parallel(study, axes),
                      "parallel_coordinates.png",
                      "Optuna's parallel coordinates: each line is a completed trial; each axis runs from the smallest "
                      "to the largest value tried (log-scale keys on log axes, categories as ticks); colour and the "
                      "first axis are its best validation top-1." + shown, few),
        drawn.section("importance", "Parameter importance", figures.draw_importance(importance),
                      "param_importance.png",
                      f"Optuna's fANOVA evaluator on an in-memory study of the {importance.trials} completed trials "
                      f"(ASHA's stopped trials count with the best figure they reached){rough}",
                      importance.reason).table(tables.importance_table(importance)),
        drawn.section("slices", "Validation top-1 per parameter", figures.draw_slices(study, slices), "slices.png",
                      f"Optuna's slice plots of the {len(slices)} "
                      f"{'most important' if importance.values else 'first'} searched parameters: one dot per "
                      "completed trial.", few),
    ]


def _outcome_sections(sweep: Sweep, drawn: _Figures) -> list[Section]:
    trials, epochs = sweep.frames.trials, sweep.frames.epochs
    rungs, rung_caption = analysis.space_rungs(sweep.spec)
    survival = analysis.rung_survival(epochs, trials)
    summary = analysis.status_summary(trials)
    return [
        drawn.section("rungs", "ASHA rung survival", figures.draw_rungs(survival, rungs, len(trials), rung_caption),
                      "rung_survival.png",
                      "How many trials reached each epoch; ASHA compares trials at its rungs and stops the rest.",
                      "no trial reported an epoch"),
        drawn.section("status", "Trials and wall time by status", figures.draw_status(summary),
                      "status_wall_time.png", "Trial counts and summed trial wall time per outcome.",
                      "the sweep has no trials" if not len(trials) else "the trials table has no status column")
        .table(tables.status_table(summary)),
    ]


def _test_section(sweep: Sweep, drawn: _Figures) -> Section:
    section = Section("test", "Test results")
    results, confusion = tables.test_tables(sweep)
    for table in results:
        section.table(table)
    if not results:
        drawn.notes["test"] = "no test results: the sweep has no winner yet (sweep.json has no test figures)"
        section.note(drawn.notes["test"])
    for i, (title, src) in enumerate(confusion):
        key = f"confusion{i}"
        if src.is_file():
            figure = Figure(key, title, Path(shutil.copyfile(src, drawn.out / src.name)),
                            "Rows: true class; columns: predicted class.")
            drawn.made.append(figure)
            section.figure(figure)
        else:
            drawn.notes[key] = f"{title}: {src} is missing"
            section.note(drawn.notes[key])
    return section
