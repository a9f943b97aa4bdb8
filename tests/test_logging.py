"""Logs a step writes to a file (DVC, CI, `kubectl logs`): whole lines with a UTC timestamp and a level, progress
as periodic lines instead of one ever-growing line of carriage returns, the usage error still one plain line."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from sample_data import AV, REPO

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (DEBUG|INFO|WARNING|ERROR|CRITICAL) xkd[\w.]*: \S")


def _step(tmp_path, module: str, *args: str, interval: str) -> tuple[int, list[str]]:
    log = tmp_path / f"{module}.stderr"
    with open(log, "w") as err:  # a file, not a terminal: what a pipeline's log collector sees
        proc = subprocess.run(
            [sys.executable, "-m", f"components.{module}", *args],
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1", "XKD_PROGRESS_INTERVAL": interval},
            stdout=subprocess.DEVNULL,
            stderr=err,
            timeout=300,
        )
    return proc.returncode, log.read_text().split("\n")


def test_a_step_logging_to_a_file_writes_timestamped_levelled_lines(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    for name in ("big_buck_bunny_432_433.webm", "v_SoccerJuggling_g23_c01.avi"):
        os.symlink(AV / name, media / name)
    (media / "truncated.mp4").write_bytes((AV / "R6llTwEh07w.mp4").read_bytes()[:300_000])
    args = ("--input", str(media), "--output", str(tmp_path / "clips"), "--workers", "1")
    code, lines = _step(tmp_path, "extract_clips", *args, interval="0")  # a line per redraw: the most lines
    assert code == 0
    lines = [line for line in lines if line]
    assert lines and all("\r" not in line for line in lines)
    assert all(LINE.match(line) for line in lines), [line for line in lines if not LINE.match(line)]
    progress = [line for line in lines if " xkd.progress: extract clips:" in line]
    assert len(progress) >= 3 and progress[-1].split("|")[-1].strip().startswith("3/3"), progress
    assert max(len(line) for line in progress) <= 160
    # the reject is a WARNING line carrying its reason (ffprobe's stderr tail, bounded), the totals an INFO line
    (reject,) = [line for line in lines if "rejected [unreadable]" in line]
    assert " WARNING xkd.data.cache_build: rejected [unreadable] " in reject and len(reject) < 600
    assert any(" INFO xkd.data.cache_build: " in line and "3 inputs, 2 ok, 1 rejected" in line for line in lines)

    # a usage error stays the one plain `error:` line a user reads
    code, lines = _step(tmp_path, "extract_clips", "--input", str(tmp_path / "nowhere"), "--output", "x", interval="0")
    assert code == 2 and [line for line in lines if line] == [f"error: input path does not exist: {tmp_path}/nowhere"]


def test_progress_off_a_terminal_logs_at_most_once_per_interval(capsys, monkeypatch):
    from xkd.log import progress

    assert not sys.stderr.isatty()  # pytest's capture: a file, as in a pipeline

    monkeypatch.setenv("XKD_PROGRESS_INTERVAL", "3600")
    bar = progress(total=20_000, desc="pretrain", unit="step")
    for step in range(20_000):  # what the training loop does every step
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}", refresh=False)
        bar.update()
    bar.close()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 2 and all(LINE.match(line) for line in lines), lines  # its first state and its last
    assert "0/20000" in lines[0] and "20000/20000" in lines[1] and "loss=0.000" in lines[1]
    assert "\r" not in err
