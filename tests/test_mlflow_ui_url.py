"""`make ui` prints the address of the project's experiment in MLflow's model-training view (MLflow 3's UI opens
experiments in its GenAI view unless the address says `?workflowType=machine_learning`): the experiment's id as
the store has it, never an assumed 1."""

from __future__ import annotations

import subprocess
import sys

import mlflow
from sample_data import REPO

from xkd.tracking import runs as tracking


def _printed_url(uri: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "xkd.tracking.ui_url", "--backend-store-uri", uri, "--port", "5077"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()[-1]


def test_make_ui_prints_the_experiments_runs_in_the_model_training_view(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    for other in ("someone-elses", "an-older-study"):  # experiments made before the pipeline's
        client.create_experiment(other)
    tracking.connect(uri)
    exp_id = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    assert exp_id != "1"
    assert _printed_url(uri) == f"http://127.0.0.1:5077/#/experiments/{exp_id}/runs?workflowType=machine_learning"

    dry = subprocess.run(["make", "-n", "ui"], cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = dry.stdout.splitlines()
    helper = next(i for i, line in enumerate(lines) if "-m xkd.tracking.ui_url" in line)
    server = next(i for i, line in enumerate(lines) if "bin/mlflow ui" in line)
    assert helper < server  # the address comes before the server takes the terminal
    assert lines[helper].split("--backend-store-uri")[1] == lines[server].split("--backend-store-uri")[1]


def test_a_store_without_the_experiment_yet_gets_the_experiments_list(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"  # a fresh clone before its first `make run`
    assert _printed_url(uri) == "http://127.0.0.1:5077/#/experiments?workflowType=machine_learning"
