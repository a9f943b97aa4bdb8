"""The pipeline run's MLflow tree (xkd.tracking.pipeline_run): one parent per invocation that ends FINISHED or
FAILED, a stale record that never nests a new run under an old one nor stops it, the git state taken before the
run wrote anything, and the experiment marked as model development. The real `dvc repro` case runs dvc itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from sample_data import REPO

from xkd.tracking import lineage
from xkd.tracking import runs as tracking

RUN_ENV = "XKD_PIPELINE_RUN"  # xkd.tracking.RUN_ENV: what `make run` sets per invocation


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in (tracking.PARENT_ENV, RUN_ENV, "DVC_STAGE"):
        monkeypatch.delenv(name, raising=False)
    tracking.connect()
    return mlflow.MlflowClient(uri)


def test_each_invocation_gets_its_own_parent_and_a_stale_record_never_blocks(store, tmp_path, monkeypatch):
    out = tmp_path / "outputs"
    monkeypatch.setenv(RUN_ENV, "make-run-1")
    first = tracking.parent_run_id(outputs_dir=out)
    assert tracking.parent_run_id(outputs_dir=out) == first  # the later stages of the same invocation

    monkeypatch.setenv(RUN_ENV, "make-run-2")  # the first run was killed before its report
    second = tracking.parent_run_id(outputs_dir=out)
    assert second != first
    assert json.loads((out / "mlflow_parent.json").read_text())["invocation"] == "env:make-run-2"
    assert store.get_run(first).info.status == "KILLED"  # not left Running forever
    tracking.finish_parent(second)

    monkeypatch.delenv(RUN_ENV)  # a step run by hand after that pipeline run finished
    third = tracking.parent_run_id(outputs_dir=out)
    assert third not in (first, second) and store.get_run(third).info.status == "RUNNING"

    for stale in (json.dumps({"run_id": "f" * 32}), "not json"):  # e.g. a record of a deleted mlflow.db
        (out / "mlflow_parent.json").write_text(stale)
        fresh = tracking.parent_run_id(outputs_dir=out)
        assert fresh != third and store.get_run(fresh).data.tags["xkd.role"] == "pipeline"
        assert json.loads((out / "mlflow_parent.json").read_text())["run_id"] == fresh


def _live_dvc_invocation() -> str:
    """The key of a `dvc repro` that is running now: this test process stands in for it (live pid, its start)."""
    from xkd.tracking import pipeline_run

    return f"dvc:{os.getpid()}:{pipeline_run._proc_start(os.getpid())}"


def test_a_step_run_by_hand_never_joins_or_closes_a_running_pipeline_run(store, tmp_path, monkeypatch):
    from xkd.tracking import pipeline_run

    out = tmp_path / "outputs"
    with monkeypatch.context() as m:  # a stage of the `make run` going on
        m.setattr(pipeline_run, "invocation", _live_dvc_invocation)
        shared = tracking.parent_run_id(outputs_dir=out)
    record = (out / "mlflow_parent.json").read_text()

    monkeypatch.chdir(tmp_path)  # a report run by hand while that pipeline run is in progress
    own = tracking.pipeline_parent()
    metric = {"dataset": "esc10", "protocol": "svm", "features": "random-init", "metric": "top1", "mean": 9.0}
    pipeline_run.finish_pipeline(own, [{**metric, "std": 1.0}])
    assert own != shared and store.get_run(own).info.status == "FINISHED"
    untouched = store.get_run(shared)
    assert untouched.info.status == "RUNNING" and untouched.data.metrics == {}  # the pipeline run goes on
    assert (out / "mlflow_parent.json").read_text() == record  # its later stages still find it
    assert tracking.parent_run_id(create=False, outputs_dir=out) is None  # nothing of another invocation to join

    (out / "mlflow_parent.json").write_text(record.replace(_live_dvc_invocation(), "dvc:999999999:1"))
    replaced = tracking.parent_run_id(outputs_dir=out)  # that dvc process is gone: an abandoned parent
    assert store.get_run(shared).info.status == "KILLED" and replaced not in (shared, own)
    assert json.loads((out / "mlflow_parent.json").read_text())["invocation"] is None
    assert tracking.parent_run_id(outputs_dir=out) == replaced  # steps run by hand share a hand-run parent


def test_a_failed_step_fails_the_pipeline_run_and_a_resumed_run_joins_the_new_one(store, tmp_path, monkeypatch):
    out = tmp_path / "outputs"
    monkeypatch.setenv(RUN_ENV, "1")
    parent = tracking.parent_run_id(outputs_dir=out)
    with pytest.raises(RuntimeError):
        with tracking.step_run("pretrain", parent) as run:
            raise RuntimeError("killed by a bad batch")
    assert store.get_run(run.info.run_id).info.status == "FAILED"
    assert store.get_run(parent).info.status == "FAILED"

    monkeypatch.setenv(RUN_ENV, "2")  # the rerun resumes the pretraining from its checkpoint
    again = tracking.parent_run_id(outputs_dir=out)
    assert again != parent
    with tracking.step_run("pretrain", again, run_id=run.info.run_id):
        pass
    tags = store.get_run(run.info.run_id).data.tags
    assert tags["mlflow.parentRunId"] == again and tags["xkd.resumed_from_parent"] == parent
    assert store.get_run(again).info.status == "RUNNING"  # the report closes it


def test_the_report_closes_the_parent_with_the_headline_and_params(store, tmp_path, monkeypatch):
    from xkd.tracking import pipeline_run

    monkeypatch.chdir(tmp_path)
    pre = tmp_path / "pretrain"
    pre.mkdir()
    (pre / "config.yaml").write_text("model:\n  preset: tiny\ntrain:\n  max_steps: 24\n")
    metrics = [
        {"dataset": "esc10", "protocol": "svm", "features": "encoder", "metric": "top1", "mean": 61.5, "std": 4.0},
        {"dataset": "esc10", "protocol": "svm", "features": "random-init", "metric": "top1", "mean": 55.0, "std": 2.0},
    ]
    parent = tracking.pipeline_parent()
    pipeline_run.finish_pipeline(parent, metrics, pipeline_run.pipeline_params(pre))
    run = store.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {
        "esc10-svm/top1": 61.5,
        "esc10-svm/top1_std": 4.0,
        "esc10-svm-random-init/top1": 55.0,
        "esc10-svm-random-init/top1_std": 2.0,
    }
    assert run.data.params == {"model.preset": "tiny", "train.max_steps": "24"}

    failing = tracking.pipeline_parent()  # a new pipeline run (the last one finished) whose report fails
    with pytest.raises(OSError):
        with pipeline_run.closing(failing):
            raise OSError("disk full")
    assert failing != parent and store.get_run(failing).info.status == "FAILED"


def test_steps_report_the_git_state_of_the_moment_the_pipeline_run_opened(store, tmp_path, monkeypatch):
    parent = tracking.parent_run_id(outputs_dir=tmp_path / "outputs")
    at_start = store.get_run(parent).data.tags["lineage.git_dirty"]
    assert at_start in ("True", "False")
    flipped = {"commit": lineage.git_commit()["commit"], "dirty": at_start != "True"}
    monkeypatch.setattr(lineage, "git_commit", lambda repo=None: flipped)  # a step rewrote tracked files since
    with tracking.step_run("evaluate", parent):
        tags = lineage.log_lineage([])
    assert tags["lineage.git_dirty"] == at_start


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_git_dirty_leaves_out_the_files_the_pipeline_writes(tmp_path):
    repo = tmp_path / "repo"
    (repo / "results" / "eval").mkdir(parents=True)
    (repo / "dvc.yaml").write_text(
        "stages:\n  evaluate:\n    foreach: ${eval.specs}\n    do:\n      cmd: x\n"
        "      metrics:\n        - results/eval/${key}.json:\n            cache: false\n"
    )
    for name, text in {
        "dvc.lock": "a",
        ".gitignore": "/x\n",
        "results/eval/esc10-svm.json": "{}",
        "code.py": "1",
    }.items():
        (repo / name).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    for name in ("dvc.lock", ".gitignore", "results/eval/esc10-svm.json"):  # what `dvc repro` rewrites
        (repo / name).write_text("rewritten by the run")
    assert lineage.git_commit(repo)["dirty"] is False
    (repo / "code.py").write_text("2")  # an edit to the code that runs is dirt
    assert lineage.git_commit(repo)["dirty"] is True


def test_the_experiment_is_marked_as_model_development(store, tmp_path):
    exp = store.get_experiment_by_name(tracking.EXPERIMENT)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    older = f"sqlite:///{tmp_path}/older.db"  # a store whose experiment was made before the tag
    mlflow.MlflowClient(older).create_experiment(tracking.EXPERIMENT)
    tracking.connect(older)
    assert mlflow.MlflowClient(older).get_experiment_by_name("xkd").tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )


STAGE = """import os, sys
from xkd.tracking import runs as tracking

step = sys.argv[1]
if step == "report":  # the fan-in, as components.report: params on the parent, which it then closes
    parent = tracking.pipeline_parent()
    tracking.log_params_flat({"n": open("params.yaml").read().split()[-1]}, run_id=parent)
    tracking.finish_parent(parent)
else:
    with tracking.pipeline_step_run(step):
        if os.environ.get("FAIL_AT") == step:
            sys.exit(3)
open(step + ".txt", "w").write(open("params.yaml").read())
"""

DVC_YAML = """stages:
  a:
    cmd: python stage.py a
    params: [n]
    outs: [a.txt]
  b:
    cmd: python stage.py b
    deps: [a.txt]
    outs: [b.txt]
  report:
    cmd: python stage.py report
    deps: [b.txt]
    outs: [report.txt]
"""


@pytest.mark.slow
def test_every_dvc_repro_is_its_own_pipeline_run(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "stage.py").write_text(STAGE)
    (proj / "dvc.yaml").write_text(DVC_YAML)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    for name in (tracking.PARENT_ENV, RUN_ENV, "DVC_STAGE"):
        env.pop(name, None)
    dvc = [str(Path(sys.executable).parent / "dvc")]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=proj, env=env, check=True, capture_output=True)
    codes = []
    for n, fail_at in ((1, ""), (2, ""), (3, "b")):  # two good runs, then one whose step b fails
        (proj / "params.yaml").write_text(f"n: {n}\n")
        done = subprocess.run(
            [*dvc, "repro"], cwd=proj, env={**env, "FAIL_AT": fail_at}, capture_output=True, text=True
        )
        codes.append(done.returncode)
        assert (done.returncode == 0) == (not fail_at), done.stdout[-2000:] + done.stderr[-2000:]
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("xkd").experiment_id], order_by=["start_time ASC"])
    parents = [r for r in runs if r.data.tags.get("xkd.role") == "pipeline"]
    assert [p.info.status for p in parents] == ["FINISHED", "FINISHED", "FAILED"]
    assert len({p.data.tags["xkd.pipeline_invocation"] for p in parents}) == 3
    assert all(p.data.tags["xkd.pipeline_invocation"].startswith("dvc:") for p in parents)
    assert [p.data.params.get("n") for p in parents] == ["1", "2", None]
    for p in parents:
        children = {
            r.data.tags["xkd.step"]: r.info.status
            for r in runs
            if r.data.tags.get("mlflow.parentRunId") == p.info.run_id
        }
        assert children == (
            {"a": "FINISHED", "b": "FAILED"} if p.info.status == "FAILED" else {"a": "FINISHED", "b": "FINISHED"}
        )
