"""What dvc.yaml's stages pass that the steps once ignored or refused: `--on-new-config restart` (a changed
pretraining config under `dvc exp run -S` starts over, logged; the same config still resumes) and
`--require-audio ${extract.require_audio}` (params.yaml's value reaches extraction)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sample_data import AV

from xkd.errors import UsageError
from xkd.train import checkpoint
from xkd.train.config import load_config


def _previous_run(out, cfg, *, finished: bool) -> None:
    """What a pretraining run of `cfg` leaves: run.json, checkpoints, metrics (and final/ when it finished)."""
    checkpoint.prepare_output(out, cfg, True)
    for step in (2, 4):
        (out / "checkpoints" / f"ckpt-{step:08d}").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 4}\n')
    if finished:
        (out / "final").mkdir()


def test_a_changed_config_clears_the_old_run_and_says_what_went(tmp_path, capsys):
    out = tmp_path / "pretrain"
    old, new = load_config("tiny", ["train.max_steps=4"]), load_config("tiny", ["train.max_steps=6"])
    _previous_run(out, old, finished=True)
    with pytest.raises(UsageError, match="holds a run with another config"):  # the CLI default: refuse
        checkpoint.prepare_output(out, new, True)
    assert checkpoint.checkpoint_dirs(out)
    state = checkpoint.prepare_output(out, new, True, "restart")
    assert state == {"config_hash": new.resume_hash()}
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "run.json"]  # only the new run's state
    assert json.loads((out / "run.json").read_text())["config_hash"] == new.resume_hash()
    log = capsys.readouterr().err
    assert "WARNING" in log and f"hash {old.resume_hash()}, newest checkpoint step 4, 2 checkpoint(s)" in log
    assert "finished: under dvc its output stays in the DVC cache" in log
    assert f"cleared it to start config {new.resume_hash()}: checkpoints, config.yaml, final, metrics.jsonl" in log


def test_an_unfinished_run_is_reported_lost_and_the_same_config_still_resumes(tmp_path, capsys):
    out = tmp_path / "pretrain"
    cfg = load_config("tiny", ["train.max_steps=4"])
    _previous_run(out, cfg, finished=False)
    state = checkpoint.prepare_output(out, cfg, True, "restart")  # same config: nothing cleared, resumed
    assert state["config_hash"] == cfg.resume_hash() and len(checkpoint.checkpoint_dirs(out)) == 2
    assert "cleared" not in capsys.readouterr().err
    checkpoint.prepare_output(out, load_config("tiny", ["train.max_steps=5"]), True, "restart")
    assert "unfinished: stopped before its end, so no cache holds it" in capsys.readouterr().err
    with pytest.raises(UsageError, match="on_new_config must be one of"):
        checkpoint.prepare_output(out, cfg, True, "overwrite")


@pytest.mark.parametrize("value, accepted", [("true", 1), ("false", 2)])
def test_require_audio_from_params_reaches_extraction(tmp_path, value, accepted):
    # two real clips, one without an audio stream: refused when params.yaml says require_audio: true
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "silent.avi").symlink_to(AV / "v_SoccerJuggling_g23_c01.avi")
    (tmp_path / "in" / "sound.webm").symlink_to(AV / "big_buck_bunny_432_433.webm")
    cmd = [sys.executable, "-m", "components.extract_clips", "--input", str(tmp_path / "in"), "--min-duration", "0.5"]
    cmd += ["--output", str(tmp_path / "out"), "--workers", "1", "--require-audio", value]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["ok"] == accepted
    assert [r["code"] for r in report["rejected"]] == ([] if accepted == 2 else ["no_audio"])


def test_require_audio_refuses_a_word_that_is_not_true_or_false(tmp_path):
    cmd = [sys.executable, "-m", "components.extract_clips", "--input", str(tmp_path), "--output", str(tmp_path)]
    proc = subprocess.run([*cmd, "--require-audio", "yes please"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "expected true or false, got 'yes please'" in proc.stderr
