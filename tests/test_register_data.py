"""`make data`: validate a copy, dvc add it, push to a local remote, pull it back (temp git repo, real media)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from sample_data import AV

from components.register_data import main, run
from xkd.errors import UsageError

pytestmark = pytest.mark.slow


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sh(repo, *cmd):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(list(cmd), cwd=repo, env=env, check=True, capture_output=True, text=True)


@pytest.fixture()
def project(tmp_path):
    repo = tmp_path / "project"
    repo.mkdir()
    _sh(repo, "git", "init", "-q")
    _sh(repo, "git", "config", "user.email", "ci@example.org")
    _sh(repo, "git", "config", "user.name", "ci")
    _sh(repo, sys.executable, "-m", "dvc", "init", "-q")
    return repo


def _ucf_copy(tmp_path):
    # A partial UCF101 copy in the official layout: the samples' two real UCF101 clips plus a stray note.
    src = tmp_path / "UCF-101"
    (src / "SoccerJuggling").mkdir(parents=True)
    for name in ("v_SoccerJuggling_g23_c01.avi", "v_SoccerJuggling_g24_c01.avi"):
        shutil.copy2(AV / name, src / "SoccerJuggling" / name)
    return src


def test_register_push_and_pull_round_trip(project, tmp_path, capsys):
    src = _ucf_copy(tmp_path)
    remote = tmp_path / "remote"
    summary = run("ucf101", str(src), repo=project, remote=str(remote))
    assert summary["validation"]["found"] == 2 and summary["validation"]["missing"] == 13318
    assert summary["mirror"] == {"copied": 2, "unchanged": 0, "removed": 0}
    pointer = project / "data" / "raw" / "ucf101.dvc"
    out = yaml.safe_load(pointer.read_text())["outs"][0]
    assert out["md5"] == summary["md5"] and out["md5"].endswith(".dir") and out["nfiles"] == 2
    assert "xkd-local" in (project / ".dvc" / "config.local").read_text()
    assert any(p.is_file() for p in remote.rglob("*"))  # pushed objects

    # A fresh clone of the project state: drop the data and DVC's cache, then pull from the remote.
    raw = project / "data" / "raw" / "ucf101"
    want = {p.relative_to(raw): _sha(p) for p in raw.rglob("*") if p.is_file()}
    shutil.rmtree(raw)
    shutil.rmtree(project / ".dvc" / "cache")
    _sh(project, sys.executable, "-m", "dvc", "pull", "-q", "data/raw/ucf101.dvc")
    got = {p.relative_to(raw): _sha(p) for p in raw.rglob("*") if p.is_file()}
    assert got == want and want[next(iter(want))] == _sha(AV / "v_SoccerJuggling_g23_c01.avi")

    # Re-registering an unchanged copy copies nothing; the CLI prints the git command for the pointer.
    assert main(["--dataset", "ucf101", "--src", str(src), "--repo", str(project), "--no-push"]) == 0
    assert "git add data/raw/ucf101.dvc" in capsys.readouterr().out


def test_wrong_folder_is_refused(project, tmp_path):
    empty = tmp_path / "wrong"
    empty.mkdir()
    shutil.copy2(AV / "R6llTwEh07w.mp4", empty)
    with pytest.raises(UsageError, match="none of the 13320 files"):
        run("ucf101", str(empty), repo=project, push=False)
    with pytest.raises(UsageError, match="not a DVC project"):
        run("ucf101", str(empty), repo=tmp_path, push=False)
