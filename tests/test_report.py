"""The report step is the pipeline's fan-in: it logs the report to the parent run and completes that run."""

from __future__ import annotations

import json

import mlflow

from components.report import run as report
from xkd.tracking import runs as tracking


def test_report_completes_the_pipeline_parent_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_PARENT_RUN_ID", raising=False)
    fold = {"fold": 1, "top1": 60.0, "hparams": {"C": 1.0}, "selected_on": "val", "paper_style": {"top1": 61.0}}
    metrics = {
        "dataset": "esc10",
        "protocol": "svm",
        "role": "student",
        "features": "encoder",
        "metric": "top1",
        "variant": "xkd",
        "folds": [fold],
        "mean": 60.0,
        "std": 0.0,
        "paper_style": {"mean": 61.0, "std": 0.0, "rule": "test"},
        "wall_s": 1.0,
    }
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "metrics.json").write_text(json.dumps(metrics))
    parent = tracking.pipeline_parent()  # what the first step of a pipeline run does
    assert mlflow.MlflowClient().get_run(parent).info.status == "RUNNING"
    report([str(tmp_path / "m")], str(tmp_path / "r"))
    run = mlflow.MlflowClient().get_run(parent)
    assert run.info.status == "FINISHED"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent, "report")}
    assert {"report/report.md", "report/scores.png"} <= artifacts
