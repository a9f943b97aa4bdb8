"""The results report: did it work (verdicts against the controls), every score beside the paper's, plots.

    python -m components.report --metrics DIR_OR_FILE... --output DIR [--pretrain DIR]

Reads metrics.json files (directories are searched recursively), writes `OUTPUT/report.md` (opening with a
verdict per encoder evaluation: learns / does not learn / no control, its margin over each control),
`OUTPUT/scores.png` (ours vs controls vs paper per dataset/protocol, chance dashed), `OUTPUT/folds.png`
(per-fold scores as points) and, with `--pretrain`, `OUTPUT/loss_curves.png`; logs them to the pipeline's
parent MLflow run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from xkd.errors import MLFLOW_PARENT_HELP, cli, step_parser


def run(metrics: list[str], output: str, *, pretrain: str | None = None, mlflow_parent: str | None = None) -> Path:
    import mlflow

    from xkd.evaluation.report import find_metrics, plot_folds, plot_scores, render
    from xkd.tracking import runs as tracking

    tracking.check_store()  # a dead or unsupported tracking store is one line now, before any work
    found = find_metrics(list(metrics))
    found.sort(key=lambda m: (m["dataset"], m["protocol"], m["features"] != "encoder", m["features"]))
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    plot_scores(found, out / "scores.png")
    plot_folds(found, out / "folds.png")
    pre = Path(pretrain) if pretrain else None
    if pre is not None and (pre / "loss_curves.png").exists():
        shutil.copy(pre / "loss_curves.png", out / "loss_curves.png")
    (out / "report.md").write_text(render(found, pre))
    parent = tracking.pipeline_parent(mlflow_parent)
    client = mlflow.MlflowClient()
    for f in sorted(out.iterdir()):
        client.log_artifact(parent, str(f), "report")
    tracking.finish_parent(parent)  # the report is the fan-in: the pipeline run is complete
    return out / "report.md"


def parser() -> argparse.ArgumentParser:
    ap = step_parser("components.report", __doc__)
    ap.add_argument("--metrics", nargs="+", required=True, help="metrics.json files or directories holding them")
    ap.add_argument("--output", required=True, help="report directory (report.md and the PNG plots)")
    ap.add_argument("--pretrain", default=None, help="pretraining output (for the loss curves)")
    ap.add_argument("--mlflow-parent", default=None, help=MLFLOW_PARENT_HELP)
    return ap


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    path = run(args.metrics, args.output, pretrain=args.pretrain, mlflow_parent=args.mlflow_parent)
    print(f"report: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
