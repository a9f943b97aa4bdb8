"""The results report: did it work (verdicts against the controls), every score beside the closest paper number.

    python -m components.report --metrics DIR_OR_FILE... --output DIR [--pretrain DIR] [--selection FILE] \
        [--plots DIR]

Reads metrics.json files (directories are searched recursively), writes `OUTPUT/report.md` (opening with a
verdict per encoder evaluation: learns / does not learn / no control, its margin over each control),
`OUTPUT/scores.png` (ours vs controls vs the closest paper number per dataset/protocol, chance dashed),
`OUTPUT/folds.png` (one bar per fold) and, with `--pretrain`, `OUTPUT/loss_curves.png` (with `--selection`:
the held-out loss of each checkpoint selection scored, on the total-loss panel); logs them to the pipeline's
parent MLflow run. `--plots DIR`: the CSVs dvc.yaml's `plots:` draw (xkd/evaluation/plot_data.py).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from xkd.errors import MLFLOW_PARENT_HELP, cli, step_parser
from xkd.log import logger

log = logger(__name__)


def run(
    metrics: list[str],
    output: str,
    *,
    pretrain: str | None = None,
    mlflow_parent: str | None = None,
    selection: str | None = None,
    plots: str | None = None,
) -> Path:
    import json

    import mlflow

    from xkd.evaluation.plot_data import write_plot_data
    from xkd.evaluation.report import find_metrics, plot_folds, plot_scores, render
    from xkd.tracking import pipeline_run
    from xkd.tracking import runs as tracking
    from xkd.tracking.plots import plot_loss_curves

    tracking.check_store()  # a dead or unsupported tracking store is one line now, before any work
    found = find_metrics(list(metrics))
    found.sort(key=lambda m: (m["dataset"], m["protocol"], m["features"] != "encoder", m["features"]))
    parent = tracking.pipeline_parent(mlflow_parent)
    # the report is the fan-in: it closes the pipeline run, FAILED if it fails itself
    with pipeline_run.closing(parent):
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        plot_scores(found, out / "scores.png")
        plot_folds(found, out / "folds.png")
        pre = Path(pretrain) if pretrain else None
        chosen = json.loads(Path(selection).read_text()) if selection else None
        if pre is not None and chosen is not None and (pre / "metrics.jsonl").exists():
            plot_loss_curves(pre / "metrics.jsonl", out / "loss_curves.png", chosen)  # with the selection's points
        elif pre is not None and (pre / "loss_curves.png").exists():
            shutil.copy(pre / "loss_curves.png", out / "loss_curves.png")
        if plots:  # the CSVs `dvc plots show` draws (dvc.yaml `plots:`)
            write_plot_data(found, Path(plots), pretrain=pre, selection=chosen)
        (out / "report.md").write_text(render(found, pre))
        client = mlflow.MlflowClient()
        for f in sorted(out.iterdir()):
            client.log_artifact(parent, str(f), "report")
        pipeline_run.finish_pipeline(parent, found, pipeline_run.pipeline_params(pre))
    return out / "report.md"


def parser() -> argparse.ArgumentParser:
    ap = step_parser("components.report", __doc__)
    ap.add_argument("--metrics", nargs="+", required=True, help="metrics.json files or directories holding them")
    ap.add_argument("--output", required=True, help="report directory (report.md and the PNG plots)")
    ap.add_argument("--pretrain", default=None, help="pretraining output (for the loss curves)")
    ap.add_argument(
        "--selection", default=None, help="selection.json of components.select_checkpoint (points on the loss plot)"
    )
    ap.add_argument(
        "--plots", default=None, help="folder for the plot data dvc.yaml declares (loss/selection/folds CSV)"
    )
    ap.add_argument("--mlflow-parent", default=None, help=MLFLOW_PARENT_HELP)
    return ap


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    path = run(
        args.metrics,
        args.output,
        pretrain=args.pretrain,
        mlflow_parent=args.mlflow_parent,
        selection=args.selection,
        plots=args.plots,
    )
    log.info(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
