"""Every kind of bad input becomes a reject row with its code and a readable reason; the run goes on."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from sample_data import AV, ESC, REPO

from components.extract_clips import run
from xkd.data.cache_build import read_report


def _make_bad_inputs(folder):
    """Real media, damaged the ways real datasets are. Returns {file name: expected code}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "not_media.mp4").write_text("this is a text file with a video extension\n")
    # mp4 cut before its moov atom: no container index at all
    (folder / "truncated.mp4").write_bytes((AV / "R6llTwEh07w.mp4").read_bytes()[:300_000])
    # mkv cut at 45 %: the header declares 10.4 s but only ~4.6 s decodes
    (folder / "truncated.mkv").write_bytes((AV / "flipping_a_pancake.mkv").read_bytes()[:200_000])
    shutil.copy(ESC / "audio" / "1-100032-A-0.ogg", folder / "audio_only.ogg")
    shutil.copy(AV / "v_SoccerJuggling_g23_c01.avi", folder / "silent.avi")
    shutil.copy(AV / "big_buck_bunny_432_433.webm", folder / "short.webm")  # 1.0 s, with audio
    shutil.copy(AV / "R6llTwEh07w.mp4", folder / "good.mp4")
    return {
        "empty.mp4": "empty_file",
        "not_media.mp4": "unreadable",
        "truncated.mp4": "unreadable",
        "truncated.mkv": "decode_error",
        "audio_only.ogg": "no_video",
        "silent.avi": "no_audio",
        "short.webm": "too_short",
    }


def test_each_bad_input_maps_to_its_code(tmp_path):
    expected = _make_bad_inputs(tmp_path / "in")
    report = run(str(tmp_path / "in"), str(tmp_path / "out"), require_audio=True, min_duration=2.0, workers=2)
    got = {os.path.basename(r["path"]): r["code"] for r in report["rejected"]}
    assert got == expected
    assert report["ok"] == 1 and report["inputs"] == len(expected) + 1
    assert all(r["reason"] for r in report["rejected"])
    reasons = {os.path.basename(r["path"]): r["reason"] for r in report["rejected"]}
    assert "moov atom not found" in reasons["truncated.mp4"]  # ffmpeg's stderr tail reaches the user
    assert read_report(tmp_path / "out") == report


def test_timeout_is_a_reject_not_a_crash(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(AV / "R6llTwEh07w.mp4", src / "slow.mp4")
    report = run(str(src), str(tmp_path / "out"), timeout_s=0.001)
    assert [r["code"] for r in report["rejected"]] == ["timeout"]


def test_missing_file_in_a_list_is_reported(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text(f"{AV / 'big_buck_bunny_432_433.webm'}\n# a comment\n{tmp_path / 'gone.mp4'}\n")
    report = run(str(lst), str(tmp_path / "out"))
    assert report["ok"] == 1
    assert [(os.path.basename(r["path"]), r["code"]) for r in report["rejected"]] == [("gone.mp4", "unreadable")]


def _cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "components.extract_clips", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_cli_exit_codes(tmp_path):
    missing = _cli("--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o1"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == f"error: input path does not exist: {tmp_path / 'nope'}"

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    none_ok = _cli("--input", str(bad), "--output", str(tmp_path / "o2"))
    assert none_ok.returncode == 1 and "error: no usable clip" in none_ok.stderr
    assert json.loads((tmp_path / "o2" / "report.json").read_text())["rejected"][0]["code"] == "empty_file"

    (bad / "ok.webm").symlink_to(AV / "big_buck_bunny_432_433.webm")
    some_ok = _cli("--input", str(bad), "--output", str(tmp_path / "o3"), "--workers", "1")
    assert some_ok.returncode == 0, some_ok.stderr
    assert "1 ok, 1 rejected" in some_ok.stderr


def test_help_works():
    for mod in ("components.extract_clips", "components.cache_spectrograms"):
        out = subprocess.run([sys.executable, "-m", mod, "--help"], capture_output=True, text=True, cwd=REPO)
        assert out.returncode == 0 and "--output" in out.stdout


def test_bad_numbers_are_usage_errors(tmp_path):
    from xkd.errors import UsageError

    with pytest.raises(UsageError, match="must be positive"):
        run(str(AV), str(tmp_path / "o"), fps=0)
