"""Lineage in a temporary MLflow store: digests come from content (an edit that keeps mtime shows)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from sample_data import AV

from xkd.errors import UsageError
from xkd.tracking.lineage import collect, dvc_md5, dvc_recorded_md5, git_commit, log_lineage, tag_model_version

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # One temporary sqlite store per module (creating one costs seconds of migrations); never the project's.
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    # artifacts next to the temporary store, not in ./mlruns of the working directory
    mlflow.create_experiment("xkd-lineage-test", artifact_location=(root / "artifacts").as_uri())
    mlflow.set_experiment("xkd-lineage-test")
    yield MlflowClient(uri)
    mlflow.set_tracking_uri(None)


def _data(tmp_path):
    data = tmp_path / "raw" / "tiny"
    data.mkdir(parents=True)
    for name in ("v_SoccerJuggling_g23_c01.avi", "R6llTwEh07w.mp4"):
        shutil.copy2(AV / name, data / name)
    return data


def test_md5_matches_what_dvc_itself_records(tmp_path):
    # DVC's own `dvc add` on real sample media is the oracle: our content hash must give the same `<md5>.dir`,
    # whether git records it in a .dvc pointer or (moved there by hand) as a stage dependency in dvc.lock.
    data = _data(tmp_path)
    dvc = lambda *a: subprocess.run([sys.executable, "-m", "dvc", *a], cwd=tmp_path, check=True, capture_output=True)  # noqa: E731
    dvc("init", "--no-scm", "-q")
    dvc("add", "raw/tiny", "-q")
    added = yaml.safe_load((tmp_path / "raw" / "tiny.dvc").read_text())["outs"][0]
    assert added["md5"].endswith(".dir") and added["nfiles"] == 2
    content = dvc_md5(data, tmp_path, mode="content")
    assert content["md5"] == added["md5"] and content["matches_recorded"] is True
    assert content["recorded_in"] == "raw/tiny.dvc" and content["nfiles"] == 2

    (tmp_path / "raw" / "tiny.dvc").unlink()
    assert dvc_recorded_md5(data, tmp_path) is None  # neither a pointer nor a lock entry
    lock = {"schema": "2.0", "stages": {"extract": {"cmd": "true", "deps": [{**added, "path": "raw/tiny"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    recorded = dvc_recorded_md5(data, tmp_path)
    assert recorded["md5"] == added["md5"] and recorded["recorded_in"] == "dvc.lock:extract.deps"
    assert dvc_md5(data, tmp_path, mode="auto") == {**content, "recorded_in": "dvc.lock:extract.deps"}


def test_one_byte_edit_with_same_mtime_changes_the_logged_digest(tmp_path, store):
    data = _data(tmp_path)
    split_caches = {"samples": str(tmp_path / "cache")}
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "manifest.jsonl").write_text('{"clip_id": "a"}\n')
    (tmp_path / "cache" / "report.json").write_text('{"inputs": 1, "ok": 1, "rejected": []}\n')

    def record():
        with mlflow.start_run() as run:
            log_lineage(
                collect(datasets={"tiny": str(data)}, splits=[("ucf101", 1)], caches=split_caches, repo=tmp_path)
            )
        return store.get_run(run.info.run_id)

    first = record()
    victim = data / "R6llTwEh07w.mp4"
    st = victim.stat()
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    victim.write_bytes(bytes(blob))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert victim.stat().st_mtime_ns == st.st_mtime_ns and victim.stat().st_size == st.st_size
    second = record()

    key = "lineage.data.tiny"
    assert first.data.tags[key].endswith(".dir") and second.data.tags[key] != first.data.tags[key]
    assert first.data.tags["lineage.split.ucf101-split1"] == second.data.tags["lineage.split.ucf101-split1"]
    assert first.data.tags["lineage.cache.samples"] == second.data.tags["lineage.cache.samples"]
    names = {d.dataset.name: d.dataset.digest for d in second.inputs.dataset_inputs}
    assert set(names) == {"tiny", "ucf101-split1", "samples"}
    assert names["tiny"] == second.data.tags[key][:36]
    assert {d.dataset.digest for d in first.inputs.dataset_inputs if d.dataset.name == "tiny"} != {names["tiny"]}


def test_pointer_md5_mismatch_is_flagged(tmp_path):
    data = _data(tmp_path)
    real = dvc_md5(data, tmp_path, mode="content")["md5"]
    (tmp_path / "raw" / "tiny.dvc").write_text(yaml.safe_dump({"outs": [{"md5": "0" * 32 + ".dir", "path": "tiny"}]}))
    info = dvc_md5(data, tmp_path, mode="auto")
    assert info["md5"] == real and info["matches_recorded"] is False and info["recorded_in"] == "raw/tiny.dvc"
    assert dvc_md5(data, tmp_path, mode="pointer")["md5"] == "0" * 32 + ".dir"
    with pytest.raises(UsageError, match="does not exist"):
        dvc_md5(tmp_path / "nothing", tmp_path, mode="content")


def test_git_commit_and_model_version_tags(tmp_path, store):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("config", "user.email", "ci@example.org")
    git("config", "user.name", "ci")
    (repo / "f.txt").write_text("x")
    git("add", "f.txt")
    git("commit", "-q", "-m", "init")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit(repo) == {"commit": head, "dirty": False}
    (repo / "f.txt").write_text("y")
    assert git_commit(repo)["dirty"] is True

    records = collect(splits=[("esc50", 1)], repo=repo)
    store.create_registered_model("xkd-encoder")
    with mlflow.start_run() as run:
        mlflow.log_text("bundle placeholder", "encoder/README.txt")
    mv = store.create_model_version("xkd-encoder", f"runs:/{run.info.run_id}/encoder", run.info.run_id)
    tags = tag_model_version("xkd-encoder", mv.version, records, repo=repo, client=store)
    got = store.get_model_version("xkd-encoder", mv.version).tags
    assert got["lineage.git_commit"] == head and got["lineage.split.esc50-split1"] == tags["lineage.split.esc50-split1"]
    assert len(got["lineage.split.esc50-split1"]) == 64
