"""What an evaluation leaves in MLflow, through components.evaluate and components.report on real ESC-10 clips:
a run that lasts as long as the evaluation, the mean as the headline and each fold as its own key (never steps),
inputs named by dataset and split, the scores on the registered encoder version, and the parent run closed by
the report with the headline."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch

import model as xkd_model
from components.evaluate import run as evaluate
from components.report import run as report
from xkd.tracking import registry
from xkd.tracking import runs as tracking

pytestmark = pytest.mark.slow


@pytest.fixture
def registered_bundle(tmp_path, monkeypatch):
    """outputs/select as checkpoint selection leaves it: bundle/, selection.json naming the registered version."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name in (tracking.PARENT_ENV, "XKD_PIPELINE_RUN", "DVC_STAGE"):
        monkeypatch.delenv(name, raising=False)
    bundle = tmp_path / "outputs" / "select" / "bundle"
    torch.manual_seed(0)
    xkd_model.export_bundle(xkd_model.build(xkd_model.preset("tiny")), bundle)
    with tracking.pipeline_step_run("select_checkpoint") as run:
        version = registry.register_encoder(bundle, run.info.run_id, tags={"role": "student"})
    selection = {"role": "student", "registered": {"name": registry.NAME, "version": version, "alias": "champion"}}
    (bundle.parent / "selection.json").write_text(json.dumps(selection))
    return bundle


def test_an_evaluation_run_lasts_the_evaluation_and_leads_with_the_mean(
    registered_bundle, micro_esc_spectrograms, tmp_path
):
    data = tmp_path / "esc_micro"
    data.mkdir()
    (data / "spectrograms").symlink_to(micro_esc_spectrograms)
    m = evaluate(
        str(registered_bundle), "esc10", "svm", str(data), str(tmp_path / "eval"), role="selected", folds="1,2"
    )
    client = mlflow.MlflowClient()
    parent = json.loads((tmp_path / "outputs" / "mlflow_parent.json").read_text())["run_id"]
    runs = client.search_runs([tracking.experiment_id()], f"tags.`mlflow.parentRunId` = '{parent}'")
    run = next(r for r in runs if r.data.tags["xkd.step"] == "evaluate:esc10-svm")
    assert run.info.status == "FINISHED"
    # opened before the features and the folds, not only to log at the end
    assert (run.info.end_time - run.info.start_time) / 1000 >= 0.5 * m["wall_s"]

    folds = {f["fold"]: f["top1"] for f in m["folds"]}
    assert sorted(folds) == [1, 2] and run.data.metrics["top1"] == pytest.approx(m["mean"])
    assert run.data.metrics["top1_std"] == pytest.approx(m["std"])
    for k, score in folds.items():
        assert run.data.metrics[f"fold_{k}/top1"] == pytest.approx(score)
    for key in run.data.metrics:  # one value per key: folds are keys, never steps
        assert [h.step for h in client.get_metric_history(run.info.run_id, key)] == [0], key
    names = sorted(d.dataset.name for d in run.inputs.dataset_inputs)
    assert names == ["esc10/folds 1 2/spectrograms"]

    version = client.get_model_version(registry.NAME, "1")
    assert version.tags["eval.esc10-svm.top1"] == f"{m['mean']:.2f}"
    assert version.tags["eval.esc10-svm.top1_folds"] == "2" and version.tags["eval.esc10-svm.run_id"] == run.info.run_id
    linked = client.get_logged_model(registry.logged_model_id(version)).metrics
    assert {x.key: x.value for x in linked}["top1"] == pytest.approx(m["mean"])

    assert client.get_run(parent).info.status == "RUNNING"  # the report closes it
    report([str(tmp_path / "eval")], str(tmp_path / "report"))
    closed = client.get_run(parent)
    assert closed.info.status == "FINISHED"
    assert closed.data.metrics["esc10-svm/top1"] == pytest.approx(m["mean"])


def test_controls_stay_in_their_own_runs_and_never_score_the_registered_model(
    registered_bundle, micro_esc_spectrograms, tmp_path
):
    data = tmp_path / "esc_micro"
    data.mkdir()
    (data / "spectrograms").symlink_to(micro_esc_spectrograms)
    scores = {}
    for features in ("random-init", "shuffled-labels"):  # controls that read the same registered bundle
        out = tmp_path / "eval" / features
        m = evaluate(str(registered_bundle), "esc10", "svm", str(data), str(out), folds="1,2", features=features)
        scores[f"evaluate:esc10-svm-{features}"] = m["mean"]
    client = mlflow.MlflowClient()
    runs = client.search_runs([tracking.experiment_id()], "tags.`xkd.step` LIKE 'evaluate:%'")
    assert {r.data.tags["xkd.step"]: r.data.metrics["top1"] for r in runs} == pytest.approx(scores)

    version = client.get_model_version(registry.NAME, "1")
    assert not [k for k in version.tags if k.startswith(registry.EVAL_TAG)]  # no eval.<control> tags
    assert client.get_logged_model(registry.logged_model_id(version)).metrics in (None, [])
