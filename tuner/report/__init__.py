"""`python -m tuner.report STORAGE/NAME`: one sweep's report, as one self-contained HTML file and as Markdown.

    STORAGE/NAME/report/report.html  every figure embedded as a base64 data URI: one file to mail or archive
    STORAGE/NAME/report/report.md    the same sections, referencing the PNGs beside it
    STORAGE/NAME/report/*.png        the figures; also attached to the sweep's parent MLflow run under report/

It reads the sweep folder through tuner.folder only. Sections: leaderboard, learning curves, best five per model
family (with two families or more), parallel coordinates of the searched parameters, parameter importance
(Optuna's fANOVA on an in-memory study rebuilt from trials.parquet), slice plots, ASHA rung
survival, trials and wall time by status, test results with confusion matrices.

    analysis   pure: searched parameters, the Optuna study, importance, rungs, statuses
    figures    the PNGs (Optuna's plots where it has one)     tables    the tables as text cells
    render     one section list -> HTML and Markdown (Jinja2)  templates the two templates and the CSS
    build      build_report()                                  publish   attach() to MLflow
    plotting   the shared matplotlib style (export draws with it too)
    __main__   the command line
"""

from tuner.folder import REPORT_DIR
from tuner.report.build import Report, build_report
from tuner.report.figures import Figure
from tuner.report.publish import attach

__all__ = ["REPORT_DIR", "Figure", "Report", "attach", "build_report"]
