"""DVC as its users drive it, in a temporary git copy of the project on the micro sample data: `dvc exp run -S`
starts a changed pretraining config cleanly, `dvc exp show` / `dvc metrics show` compare the headline numbers
(mean, std, n per evaluation, from small committed files), `dvc plots show` renders the declared plots, and
`dvc push` works with the default remote (the "Use `dvc push`" hint `dvc repro` prints is true)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sample_data import micro_inputs

from xkd.paths import REPO

# slow (a pipeline run and an experiment on the micro data, minutes): left to `make test`
pytestmark = pytest.mark.slow

ESC_SPEC = {"dataset": "esc10", "protocol": "svm", "folds": "1,2", "role": "selected", "preset": "tiny"}
SPECS = {  # two evaluations of ESC-10 folds 1-2: the method and the cheapest control
    "esc10-svm": {**ESC_SPEC, "features": "encoder"},
    "esc10-svm-logmel-stats": {**ESC_SPEC, "features": "logmel-stats"},
}


def _project(root: Path) -> Path:
    """The project's code, pipeline and configs in a new git repository; inputs: 4 real clips and 40 ESC-10
    clips (2 per class in folds 1 and 2, what the SVM's validation carve needs)."""
    project = root / "project"
    for d in ("components", "xkd", "model", "configs"):
        shutil.copytree(REPO / d, project / d, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("dvc.yaml", ".gitignore", ".dvcignore", "data/paper_results.yaml"):
        (project / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / f, project / f)
    os.symlink(REPO / "data" / "splits", project / "data" / "splits")
    (project / "data" / "samples" / "esc10").mkdir(parents=True)
    for f in ("MANIFEST.tsv", "esc10/esc10_labels.csv"):
        shutil.copy(REPO / "data" / "samples" / f, project / "data" / "samples" / f)
    micro_inputs(project / "data" / "micro")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"] = {"samples-av": {"raw": "data/micro/av"}, "esc10": {"raw": "data/micro/esc10"}}
    params["pretrain"]["max_steps"] = 2
    params["eval"] = {"specs": SPECS}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["init", "-q"], ["config", "user.name", "test"], ["config", "user.email", "test@127.0.0.1"]):
        _run(project, "git", *args)
    _run(project, _dvc(), "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", project / ".dvc" / "config")  # the default remote, as the project has it
    _run(project, "git", "add", "-A")
    _run(project, "git", "commit", "-q", "-m", "project")
    return project


def _dvc() -> str:
    return str(Path(sys.executable).parent / "dvc")


def _env(project: Path) -> dict:
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("MLFLOW_PARENT_RUN_ID", None)
    return env


def _run(project: Path, *cmd: str, timeout: int = 2400) -> str:
    proc = subprocess.run(
        cmd, cwd=project, env=_env(project), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{' '.join(cmd[:3])}: {(proc.stdout + proc.stderr)[-4000:]}"
    return proc.stdout + proc.stderr


def test_exp_run_with_a_changed_param_then_exp_show_metrics_plots_and_push(tmp_path):
    project = _project(tmp_path)
    _run(project, _dvc(), "exp", "run", "-n", "two-steps")
    # a changed pretraining config: the run of 2 steps left in outputs/pretrain (persist) is cleared, not refused
    log = _run(project, _dvc(), "exp", "run", "-n", "three-steps", "-S", "pretrain.max_steps=3")
    assert "cleared it to start config" in log and "newest checkpoint step 2" in log
    assert yaml.safe_load((project / "outputs" / "pretrain" / "config.yaml").read_text())["train"]["max_steps"] == 3
    assert (project / "outputs" / "pretrain" / "final" / "config.json").exists()  # the new run finished

    shown = json.loads(_run(project, _dvc(), "exp", "show", "--json"))
    # [{rev: "workspace"}, {rev: <HEAD>, experiments: [{revs: [{name, data: {params, metrics}}]}]}]
    exps = {r["name"]: r["data"] for rev in shown for e in rev.get("experiments") or [] for r in e["revs"]}
    assert set(exps) == {"two-steps", "three-steps"}
    steps = {n: d["params"]["params.yaml"]["data"]["pretrain"]["max_steps"] for n, d in exps.items()}
    assert steps == {"two-steps": 2, "three-steps": 3}
    for data in exps.values():
        headline = data["metrics"]["results/eval/esc10-svm.json"]["data"]
        assert set(headline) == {"top1", "n_folds"} and set(headline["top1"]) == {"mean", "std"}
        assert headline["n_folds"] == 2 and 0 <= headline["top1"]["mean"] <= 100
    # the control (hand-made features, no encoder) is the same in both: experiments are compared like with like
    control = [d["metrics"]["results/eval/esc10-svm-logmel-stats.json"]["data"] for d in exps.values()]
    assert control[0] == control[1]

    metrics = json.loads(_run(project, _dvc(), "metrics", "show", "--json"))
    files = next(iter(metrics.values()))["data"]
    assert set(files) == {f"results/eval/{k}.json" for k in SPECS}  # only the small headline files
    for f in files.values():
        assert {k: set(v) if isinstance(v, dict) else v for k, v in f["data"].items()} == {
            "top1": {"mean", "std"},
            "n_folds": 2,
        }
    diff = json.loads(_run(project, _dvc(), "metrics", "diff", "two-steps", "three-steps", "--json", "--all"))
    assert "top1.mean" in diff["results/eval/esc10-svm.json"]

    _run(project, _dvc(), "plots", "show", "-o", "rendered")
    html = (project / "rendered" / "index.html").read_text()
    for title in ("pretraining loss", "checkpoint selection", "per-fold scores"):
        assert title in html
    assert "esc10-svm fold 2" in html and '"rec_v"' in html  # the data is in the page, not only titles
    assert (project / "results" / "plots" / "loss.csv").read_text().count("\n") == 1 + 3  # header + 3 steps

    # the default remote: `dvc push` (what every `dvc repro` suggests) works with no setup
    _run(project, _dvc(), "push", "-q")
    assert any((tmp_path / "xkd-dvc-remote").rglob("*"))
