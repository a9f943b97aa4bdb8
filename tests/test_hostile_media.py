"""Hostile inputs to the extraction step (issue 16): extreme frame geometry, file names ffmpeg would read as a
protocol, and parameters so large that a run never finishes. Each must end in a reject row or a one-line usage
error, never a crash, a hang or a traceback."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from sample_data import AV, REPO

from xkd.data.media import MediaError, scaled_size

STEP_TIMEOUT_S = 300  # generous: the shared test machine can be loaded


def _lavfi(out, size, seconds=2):
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"color=c=red:s={size}:d={seconds}"]
        + ["-f", "lavfi", "-i", f"sine=d={seconds}", "-shortest", "-pix_fmt", "yuv420p", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _step(args, cwd, timeout=STEP_TIMEOUT_S):
    """Run the extraction CLI in a subprocess, so a segfault or a hang fails the test instead of killing it."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "components.extract_clips", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _report(out):
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"] == report["ok"] + len(report["rejected"])
    return report


@pytest.mark.parametrize("workers", [1, 2])
def test_extreme_geometry_is_rejected_before_decoding(tmp_path, workers):
    src = tmp_path / "in"
    src.mkdir()
    _lavfi(src / "tall.mp4", "4x4096")  # short side 112 -> 112x114688, beyond JPEG's 65,535 px
    _lavfi(src / "strip.mp4", "2048x16")  # 128:1: -> 14336x112, not a camera or screen format
    shutil.copy(AV / "R6llTwEh07w.mp4", src / "good.mp4")
    out = tmp_path / "out"
    proc = _step(["--input", str(src), "--output", str(out), "--workers", str(workers)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = _report(out)
    assert report["inputs"] == 3 and report["ok"] == 1
    codes = {os.path.basename(r["path"]): r["code"] for r in report["rejected"]}
    assert codes == {"tall.mp4": "decode_error", "strip.mp4": "decode_error"}
    assert all("aspect ratio" in r["reason"] for r in report["rejected"])


def test_scaled_size_bounds_the_jpeg_side():
    assert scaled_size(1920, 1080, 112) == (199, 112)
    with pytest.raises(MediaError, match="65535 px") as err:
        scaled_size(1000, 100, 7000)  # 10:1 is allowed, but 70000 px wide cannot be a JPEG
    assert err.value.code == "decode_error"


def test_ordinary_wide_and_tall_videos_are_kept(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _lavfi(src / "ultrawide.mp4", "640x180")  # 32:9
    _lavfi(src / "portrait.mp4", "180x320")  # phone video, 9:16
    out = tmp_path / "out"
    proc = _step(["--input", str(src), "--output", str(out), "--workers", "1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = _report(out)
    assert report["ok"] == 2, report["rejected"]


@pytest.mark.parametrize("name", ["pipe:x.mp4", "concat:x.mp4", "file:x.mp4"])
def test_protocol_like_file_names_are_read_as_files(tmp_path, name):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(AV / "R6llTwEh07w.mp4", src / name)
    out = tmp_path / "out"
    # relative --input ".": the job path is the bare name "pipe:x.mp4", which ffmpeg would read as a protocol
    proc = _step(["--input", ".", "--output", str(out), "--workers", "1", "--timeout", "120"], src)
    assert proc.returncode == 0, proc.stderr
    report = _report(out)
    assert report["ok"] == 1 and report["rejected"] == []
    entry = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert entry["clip_id"] == name.rsplit(".", 1)[0]  # the id is unchanged: the file is found by its stem
    assert entry["video"]["frames"] > 0


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--fps", "1e9"),
        ("--fps", "121"),
        ("--sample-rate", "100000000"),
        ("--sample-rate", "192001"),
        ("--short-side", "100000"),
    ],
)
def test_absurd_parameters_are_usage_errors_before_any_work(tmp_path, flag, value):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(AV / "R6llTwEh07w.mp4", src / "good.mp4")
    out = tmp_path / "out"
    proc = _step(["--input", str(src), "--output", str(out), flag, value], tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert flag in proc.stderr
    assert not out.exists()


def test_decode_honours_the_timeout(tmp_path):
    """probe finishes quickly but decoding a long file at --fps 120 cannot finish within 1 s: a timeout reject."""
    src = tmp_path / "in"
    src.mkdir()
    _lavfi(src / "long.mp4", "1280x720", seconds=60)
    out = tmp_path / "out"
    proc = _step(
        ["--input", str(src), "--output", str(out), "--fps", "120", "--short-side", "720", "--timeout", "1"],
        tmp_path,
        timeout=60,
    )
    report = _report(out)
    assert proc.returncode == 1
    assert [r["code"] for r in report["rejected"]] == ["timeout"]
