"""`run-local`: the whole KFP DAG under kfp.local.SubprocessRunner(use_venv=False) on the micro sample data
(tiny preset, 2 steps, 2 partitions), and its metrics.json equal those of `dvc repro` of the same stages on
the same data and seed (run beside it, in a temporary copy of the project)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sample_data import micro_inputs

REPO = Path(__file__).resolve().parents[2]
# slow (minutes), and still run by `make test`: the only check that the KFP DAG computes what dvc.yaml does
pytestmark = pytest.mark.slow
SPECS = [{"dataset": "esc10", "protocol": "svm", "folds": "1,2", "role": "selected", "preset": "tiny"}]
# The bundle's path and the wall time differ between runners by nature; encoder_digest hashes the tensors and
# sorted metadata (not the file bytes), so it must be equal too.
VOLATILE = {"encoder", "wall_s"}


def start_dvc(project: Path, inputs: dict[str, Path]) -> subprocess.Popen:
    for d in ("components", "xkd", "model", "configs"):
        shutil.copytree(REPO / d, project / d, ignore=shutil.ignore_patterns("__pycache__"))
    (project / "data").mkdir()
    for d in ("samples", "splits"):
        if (REPO / "data" / d).exists():
            os.symlink(REPO / "data" / d, project / "data" / d)
    for f in ("dvc.yaml", "data/paper_results.yaml"):
        if (REPO / f).exists():
            shutil.copy(REPO / f, project / f)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, path in inputs.items():
        shutil.copytree(path, project / "data" / "micro" / name)
        params["datasets"][name]["raw"] = f"data/micro/{name}"
    params["pretrain"]["max_steps"] = 2
    params["eval"] = {"specs": {f"{s['dataset']}-{s['protocol']}": {**s, "features": "encoder"} for s in SPECS}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("MLFLOW_PARENT_RUN_ID", None)
    dvc = Path(sys.executable).parent / "dvc"
    cmd = f"{dvc} init -q --no-scm && {dvc} repro -q"
    return subprocess.Popen(
        cmd, shell=True, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def comparable(path: Path) -> dict:
    m = json.loads(path.read_text())
    return {k: v for k, v in m.items() if k not in VOLATILE}


def test_run_local_matches_dvc_repro(tmp_path, monkeypatch):
    from pipelines.local import run_local

    inputs = micro_inputs(tmp_path / "inputs")
    dvc = start_dvc(tmp_path / "dvc", inputs)
    monkeypatch.delenv("MLFLOW_PARENT_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)  # a task writing relative to its working directory must not touch the repo
    try:
        result = run_local(
            tmp_path / "kfp", max_steps=2, partitions=2, eval_specs=SPECS, raw={k: str(v) for k, v in inputs.items()}
        )
    finally:
        out, _ = dvc.communicate(timeout=600)
    assert dvc.returncode == 0, out[-3000:]

    work = tmp_path / "kfp"
    clips = json.loads((work / "cache" / "samples-av" / "clips" / "report.json").read_text())
    assert clips["inputs"] == 4 == clips["ok"] + len(clips["rejected"]) and len(clips["partitions"]) == 2
    spectro = json.loads((work / "cache" / "samples-av" / "spectrograms" / "report.json").read_text())
    assert [r["code"] for r in spectro["rejected"]] == ["no_audio"]  # the clip without sound
    assert result["report"] and Path(result["report"]).read_text().strip()

    kfp_metrics = [Path(p) for p in result["metrics"]]
    dvc_metrics = sorted((tmp_path / "dvc" / "outputs" / "eval").glob("*/metrics.json"))
    assert len(kfp_metrics) == len(dvc_metrics) == len(SPECS)
    assert comparable(kfp_metrics[0]) == comparable(dvc_metrics[0])
    assert json.loads(kfp_metrics[0].read_text())["encoder_digest"]
    kfp_bundle = Path(json.loads(kfp_metrics[0].read_text())["encoder"])
    assert_same_bundle(kfp_bundle, tmp_path / "dvc" / "outputs" / "select" / "bundle")


def assert_same_bundle(a: Path, b: Path):
    import torch
    from safetensors import safe_open

    files = sorted(p.name for p in a.glob("*.safetensors"))
    assert files and files == sorted(p.name for p in b.glob("*.safetensors"))
    for name in files:
        with safe_open(a / name, "pt") as x, safe_open(b / name, "pt") as y:
            assert x.metadata() == y.metadata() and sorted(x.keys()) == sorted(y.keys())
            assert all(torch.equal(x.get_tensor(k), y.get_tensor(k)) for k in x.keys()), name
