"""Trial statuses in the report and the multi-objective code: every TrialStatus drawn in its own colour, and the
infeasible status read through TrialStatus (not a bare string) wherever trials are counted or drawn."""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.colors import to_hex

from tuner.report.analysis import status_summary
from tuner.report.figures import STATUS_COLORS, UNKNOWN_STATUS_COLOR, draw_status
from tuner.results import TrialStatus


def test_every_trial_status_has_a_colour_of_its_own():
    assert set(STATUS_COLORS) == set(TrialStatus)
    colours = [to_hex(c) for c in STATUS_COLORS.values()]
    assert len(set(colours)) == len(colours) and to_hex(UNKNOWN_STATUS_COLOR) not in colours


def test_the_status_figure_draws_each_status_in_its_colour():
    trials = pd.DataFrame({"trial_id": [s.value for s in TrialStatus] + ["x"],
                           "status": [s.value for s in TrialStatus] + ["from_a_newer_version"],
                           "wall_s": [10.0] * (len(TrialStatus) + 1)})
    fig = draw_status(status_summary(trials))
    bars = fig.axes[0].patches
    drawn = [to_hex(bar.get_facecolor()) for bar in bars]
    expected = [to_hex(STATUS_COLORS[s]) for s in TrialStatus] + [to_hex(UNKNOWN_STATUS_COLOR)]
    assert drawn == expected
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_infeasible_trials_are_counted_and_never_drawn_as_trained(tmp_path):
    from tuner.front import mark_front
    from tuner.mo_search import history_of
    from tuner.objectives import INFEASIBLE_ACCURACY, parse_constraints, parse_objectives
    from tuner.report.pareto import draw_front, front_table
    from tuner.spec import build_spec

    spec = build_spec(space="efficiency", dataset="digits", storage=str(tmp_path), name="mo")
    assert spec.multi_objective, "the efficiency space searches accuracy against a cost"
    costs = {f"cost_{c}": 1.0 for c in ("params_m", "model_mb", "latency_ms", "images_per_s", "peak_mem_mb")}
    rows = [{"trial_id": "t1", "status": TrialStatus.FINISHED.value, "best_val_top1": 80.0, "model": "cnn_basic",
             **costs},
            {"trial_id": "t2", "status": TrialStatus.INFEASIBLE.value, "best_val_top1": math.nan, "model": "cnn_basic",
             **{k: 1e9 for k in costs}}]
    mark_front(rows, spec)
    assert [r["feasible"] for r in rows] == [True, False] and not rows[1]["pareto"]
    assert "1 config(s) broke a cost budget" in front_table(rows, spec).note
    objectives, constraints = parse_objectives(spec.objectives), parse_constraints(spec.constraints)
    (_, _), (values, _) = history_of(rows, objectives, constraints)
    assert values[[o.name for o in objectives].index("val_top1")] == INFEASIBLE_ACCURACY
    fig = draw_front(rows, spec)
    assert fig is not None
    import matplotlib.pyplot as plt

    plt.close(fig)
