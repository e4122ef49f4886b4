"""python -m tuner.report STORAGE/NAME [--mlflow-uri URI] [--no-mlflow]"""

from __future__ import annotations

import argparse

from tuner import cli, folder
from tuner.report import REPORT_DIR, attach, build_report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuner.report", description="Write a sweep's report (HTML with "
                                "embedded figures, Markdown + PNGs) into STORAGE/NAME/report/ and attach it to the "
                                "sweep's parent MLflow run.")
    p.add_argument("sweep_dir", metavar="STORAGE/NAME", help="the sweep folder (holds sweep.json, trials.parquet)")
    p.add_argument("--mlflow-uri", help="MLflow tracking URI (default: the one recorded in sweep.json)")
    p.add_argument("--no-mlflow", action="store_true", help="write the report only; attach nothing to MLflow")
    return p


@cli.command
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    sweep = folder.load(args.sweep_dir)
    report = build_report(sweep)
    print(f"report: {report.html} (self-contained, {len(report.figures)} figures)")
    print(f"        {report.markdown} (PNGs beside it)")
    for key, why in report.notes.items():
        print(f"  no {key} figure: {why}")
    if not args.no_mlflow:
        warning = attach(sweep, [f.file for f in report.figures] + [report.html, report.markdown], REPORT_DIR,
                         args.mlflow_uri)
        if warning:
            print(f"warning: {warning}; the report is in {report.html.parent}")
        else:
            print(f"attached to MLflow run {sweep.record.parent_run_id} under {REPORT_DIR}/")
    return cli.EXIT_OK


if __name__ == "__main__":
    cli.exit_with(main)
