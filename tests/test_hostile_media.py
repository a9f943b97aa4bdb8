"""Hostile inputs to the extraction steps (issue 16): extreme frame geometry, file names ffmpeg would read as a
protocol, parameters so large that a run never finishes, streams of unequal length, headers that lie about the
duration, files with several streams, very long files, and runs that are killed. Each must end in a cache entry,
a reject row or a one-line usage error, never a crash, a hang, a traceback or files left behind."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
from sample_data import AV, REPO

from xkd.data.cache import read_audio, read_clip
from xkd.data.media import JPEG_MAX_SIDE, MediaError, scaled_size

STEP_TIMEOUT_S = 300  # generous: the shared test machine can be loaded


def _lavfi(out, size, seconds=2):
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"color=c=red:s={size}:d={seconds}"]
        + ["-f", "lavfi", "-i", f"sine=d={seconds}", "-shortest", "-pix_fmt", "yuv420p", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], check=True, timeout=120)


def _step(args, cwd, timeout=STEP_TIMEOUT_S, module="components.extract_clips"):
    """Run a cache step's CLI in a subprocess, so a segfault or a hang fails the test instead of killing it."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
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
    with pytest.raises(MediaError, match=f"{JPEG_MAX_SIDE} px") as err:
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
        ("--max-duration", "0"),
        ("--max-duration", "inf"),
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


def _entries(out):
    return {
        os.path.basename(e["source"]): e for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())
    }


def test_streams_of_unequal_length_are_measured_on_their_own(tmp_path):
    """1.5 s of video beside 10 s of audio is a valid file (each stream decodes all it declares), and a subtitle
    running to 100 s does not make a 3 s clip look truncated: only video/audio streams set the real duration."""
    src = tmp_path / "in"
    src.mkdir()
    _ffmpeg(
        *"-f lavfi -i testsrc2=s=320x240:d=1.5 -f lavfi -i sine=d=10 -pix_fmt yuv420p".split(), src / "short_video.mp4"
    )
    srt = tmp_path / "late.srt"
    srt.write_text("1\n00:00:00,500 --> 00:00:01,000\nhello\n\n2\n00:01:39,000 --> 00:01:40,000\nbye\n")
    av = "-f lavfi -i testsrc2=s=320x240:d=3 -f lavfi -i sine=d=3".split()
    _ffmpeg(*av, "-i", srt, *"-map 0 -map 1 -map 2 -c:s mov_text -pix_fmt yuv420p".split(), src / "subtitled.mp4")
    out = tmp_path / "out"
    proc = _step(["--input", str(src), "--output", str(out), "--workers", "1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _report(out)["rejected"] == []
    entries = _entries(out)
    short = entries["short_video.mp4"]
    assert abs(short["video"]["frames"] - 12) <= 1 and short["audio"]["samples"] == pytest.approx(160_000, abs=1600)
    assert short["duration_s"] == pytest.approx(10, abs=0.05)  # the longer stream; no cap reached
    assert short["truncated_to_s"] is None
    sub = entries["subtitled.mp4"]
    assert sub["duration_s"] == pytest.approx(3, abs=0.13) and abs(sub["video"]["frames"] - 24) <= 1


def _mkv_with_duration(path, declared_ms):
    """Rewrite a Matroska file's Segment Duration (EBML id 0x4489, an 8-byte float in ms)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89\x88")
    assert at > 0, "no 8-byte Segment Duration element"
    data[at + 3 : at + 11] = struct.pack(">d", declared_ms)
    path.write_bytes(bytes(data))


def test_audio_files_must_decode_half_their_declared_duration(tmp_path):
    """cache_spectrograms --input applies the clip rule: a header declaring 24.8 days around 2 s of audio, or a
    10 s stream cut at 40 %, is a decode_error; duration_s is what decoded, never the header's claim."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("days_untagged.mkv", "days_tagged.mkv"):
        _ffmpeg("-f", "lavfi", "-i", "sine=d=2", "-c:a", "libvorbis", src / name)
        _mkv_with_duration(src / name, 2_147_483_647.0)  # INT32_MAX ms = 2,147,483.647 s
    # without its per-stream DURATION tag, the only duration the stream has is the container's 24.8 days
    untagged = src / "days_untagged.mkv"
    untagged.write_bytes(untagged.read_bytes().replace(b"DURATION", b"DURATIOX"))
    _ffmpeg("-f", "lavfi", "-i", "sine=d=10", "-c:a", "libvorbis", tmp_path / "full.mkv")
    full = (tmp_path / "full.mkv").read_bytes()
    (src / "cut.mkv").write_bytes(full[: len(full) * 2 // 5])
    out = tmp_path / "out"
    args = ["--input", str(src), "--output", str(out), "--workers", "1"]
    proc = _step(args, tmp_path, module="components.cache_spectrograms")
    assert proc.returncode == 0, proc.stderr
    report = _report(out)
    codes = {os.path.basename(r["path"]): r["code"] for r in report["rejected"]}
    assert codes == {"days_untagged.mkv": "decode_error", "cut.mkv": "decode_error"}
    kept = _entries(out)["days_tagged.mkv"]  # its audio stream declares 2 s and decodes 2 s
    assert kept["duration_s"] == pytest.approx(2, abs=0.05) and report["media_seconds"] < 3


def test_the_best_video_and_audio_streams_are_used(tmp_path):
    """A 320x180 preview before the 1280x720 video, 8 kHz audio before 48 kHz, and a 1920x1080 cover picture:
    the 720p video and the 48 kHz audio are decoded, and the entry records their stream indices."""
    src = tmp_path / "in"
    src.mkdir()
    _ffmpeg(
        "-f", "lavfi", "-i", "color=c=red:s=320x180:d=3",
        "-f", "lavfi", "-i", "color=c=blue:s=1280x720:d=3",
        "-f", "lavfi", "-i", "sine=f=440:r=8000:d=3",
        "-f", "lavfi", "-i", "sine=f=6000:r=48000:d=3",  # 6 kHz: a tone 8 kHz audio cannot carry
        "-f", "lavfi", "-i", "color=c=green:s=1920x1080:d=0.04",
        "-map", "0", "-map", "1", "-map", "2", "-map", "3", "-map", "4", "-pix_fmt", "yuv420p",
        "-c:v:0", "libx264", "-c:v:1", "libx264", "-c:v:2", "mjpeg", "-frames:v:2", "1",
        "-disposition:v:2", "attached_pic", "-c:a", "aac", src / "multi.mp4",
    )  # fmt: skip
    out = tmp_path / "out"
    proc = _step(["--input", str(src), "--output", str(out), "--workers", "1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    entry = _entries(out)["multi.mp4"]
    frames, _ = read_clip(out, entry["clip_id"])
    mean_rgb = frames.float().mean(dim=(0, 1, 2)).tolist()
    assert mean_rgb[2] > 200 and mean_rgb[0] < 50, mean_rgb  # blue, not the red preview or the green cover
    wave = read_audio(out, entry["clip_id"])
    peak_hz = np.argmax(np.abs(np.fft.rfft(wave))) * 16000 / len(wave)
    assert peak_hz == pytest.approx(6000, abs=50)
    assert entry["video"]["stream_index"] == 1 and entry["audio"]["stream_index"] == 3


@pytest.mark.slow
def test_a_long_file_is_capped_and_memory_stays_bounded(tmp_path):
    """20 minutes of video: the first --max-duration (600) s are kept and recorded as truncated, and the step's
    peak memory stays bounded (~150 MiB measured): frames are compressed as they arrive instead of all raw frames
    being held, several times over (2.7 GB for this file before)."""
    src = tmp_path / "in"
    src.mkdir()
    _ffmpeg(
        *"-f lavfi -i testsrc2=s=64x36:r=8:d=1200 -f lavfi -i sine=r=8000:d=1200".split(),
        *"-c:v libx264 -preset ultrafast -pix_fmt yuv420p -c:a pcm_s16le".split(),
        src / "long.mkv",
    )
    out = tmp_path / "out"
    # a wrapper process, so that RUSAGE_CHILDREN covers the step (and its ffmpeg) and nothing else
    measure = (
        "import resource, subprocess, sys; "
        "rc = subprocess.run([sys.executable, '-m', 'components.extract_clips', *sys.argv[1:]]).returncode; "
        "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", measure, "--input", str(src), "--output", str(out), "--workers", "1"],
        env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
    )
    rc, peak_kib = map(int, proc.stdout.split())
    assert rc == 0, proc.stderr
    assert peak_kib < 600 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
    entry = _entries(out)["long.mkv"]
    assert entry["video"]["frames"] == 4800 and entry["audio"]["samples"] == 600 * 16000
    assert entry["truncated_to_s"] == 600 and entry["duration_s"] == pytest.approx(600)


def test_a_frame_jpeg_cannot_store_is_a_reject_not_a_crash():
    """libjpeg cannot store a side beyond 65,500 px; the encoder must raise a decode_error, not kill the worker
    (torchvision's encode_jpeg segfaulted). Run in a subprocess so a crash fails the test instead of pytest."""
    code = (
        "import numpy as np\n"
        "from xkd.data.clips import encode_jpegs\n"
        "from xkd.data.media import MediaError\n"
        "try:\n"
        "    encode_jpegs(np.zeros((1, 1, 70000, 3), np.uint8), 90)\n"
        "except MediaError as err:\n"
        "    print(err.code)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-500:])
    assert proc.stdout.strip() == "decode_error"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_extraction_leaves_no_temp_files(tmp_path, sig):
    """Killing a run while ffmpeg decodes leaves nothing in TMPDIR (no xkd-audio-* folders, which every kill used
    to leak), the orphaned ffmpeg exits, and the re-run completes and leaves nothing either."""
    src, tmp = tmp_path / "in", tmp_path / "tmp"
    src.mkdir()
    tmp.mkdir()
    _lavfi(src / "clip.mp4", "640x360", seconds=20)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TMPDIR=str(tmp))
    cmd = [sys.executable, "-m", "components.extract_clips", "--input", str(src), "--output", str(out)]
    # 30 fps at full size: a decode of several seconds, to kill in the middle of
    slow = [*cmd, "--workers", "1", "--fps", "30", "--short-side", "360"]
    run = subprocess.Popen(slow, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline, decoders = time.monotonic() + 120, []
        while not decoders and run.poll() is None and time.monotonic() < deadline:
            decoders = [c for c in psutil.Process(run.pid).children(recursive=True) if c.name() == "ffmpeg"]
            time.sleep(0.05)
        assert decoders, "the step never started ffmpeg"
        time.sleep(0.5)  # mid-decode
        run.send_signal(sig)
        run.wait(timeout=60)
        psutil.wait_procs(decoders, timeout=60)  # the orphaned ffmpeg stops at its next write (broken pipe)
        assert not any(d.is_running() and d.status() != psutil.STATUS_ZOMBIE for d in decoders)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert sorted(p.name for p in tmp.iterdir()) == []
    rerun = subprocess.run(
        [*cmd, "--workers", "1"], env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, cwd=tmp_path
    )
    assert rerun.returncode == 0, rerun.stderr
    assert _report(out)["ok"] == 1
    assert sorted(p.name for p in tmp.iterdir()) == []
