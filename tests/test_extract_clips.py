"""Clip extraction on the real sample videos: streams, lengths, pixels, manifest contract."""

import json
import subprocess
import tarfile

import numpy as np
import pytest
from sample_data import AV, sample_manifest

from xkd.data.cache import open_cache, read_audio, read_clip
from xkd.data.cache_build import read_manifest, read_report

pytestmark = pytest.mark.slow

WITH_AUDIO = {
    "R6llTwEh07w.mp4",
    "SOX5yA1l24A.mp4",
    "WUzgd7C1pWA.mp4",
    "flipping_a_pancake.mkv",
    "mmaction2_test.avi",
    "big_buck_bunny_432_433.webm",
}


def _by_file(cache):
    return {e["source"].rsplit("/", 1)[-1]: e for e in read_manifest(cache)}


def test_report_accounts_for_every_input(samples_clips):
    report = read_report(samples_clips)
    assert report["inputs"] == 14 == report["ok"] + len(report["rejected"])
    assert report["ok"] == 14 and report["rejected"] == []
    assert report["bytes_per_media_second"] > 0


def test_has_audio_exactly_for_the_six_files_with_audio(samples_clips):
    entries = _by_file(samples_clips)
    assert {name for name, e in entries.items() if e["audio"] is not None} == WITH_AUDIO
    for name in WITH_AUDIO:
        wave = read_audio(samples_clips, entries[name]["clip_id"])
        assert wave.dtype == np.float32 and wave.ndim == 1
        assert len(wave) == entries[name]["audio"]["samples"]
        assert 0 < np.abs(wave).max() <= 1.0001  # real signal, int16 / 32767 scale


def test_frame_count_within_one_of_8_fps_times_duration(samples_clips):
    entries = _by_file(samples_clips)
    for row in sample_manifest():
        if not row["path"].startswith("av/"):
            continue
        e = entries[row["path"][3:]]
        expected = 8 * float(row["duration_s"])
        assert abs(e["video"]["frames"] - expected) <= 1, (row["path"], e["video"]["frames"], expected)
        assert min(e["video"]["height"], e["video"]["width"]) == 112


def test_audio_length_matches_duration(samples_clips):
    for name, e in _by_file(samples_clips).items():
        if e["audio"]:
            assert abs(e["audio"]["samples"] / 16000 - e["duration_s"]) < 0.1, name


def _independent_decode(path, width, height):
    # the sampling rule of the cache: frame k is the last native frame at or before k/8 s
    graph = f"[0:v:0]fps=fps=8:round=up,scale={width}:{height}:flags=bilinear[out]"
    cmd = [
        "ffmpeg",
        "-nostdin",
        "-v",
        "error",
        "-i",
        str(path),
        "-filter_complex",
        graph,
        "-map",
        "[out]",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]
    raw = subprocess.run(cmd, capture_output=True, check=True, timeout=120).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def test_frames_match_an_independent_ffmpeg_decode(samples_clips):
    for name, e in _by_file(samples_clips).items():
        frames, fps = read_clip(samples_clips, e["clip_id"])
        assert fps == 8.0 and frames.dtype.is_floating_point is False
        assert tuple(frames.shape) == (e["video"]["frames"], e["video"]["height"], e["video"]["width"], 3)
        ref = _independent_decode(AV / name, e["video"]["width"], e["video"]["height"])
        assert len(ref) == len(frames), name
        mse = np.mean((frames.numpy().astype(np.float64) - ref.astype(np.float64)) ** 2)
        psnr = 10 * np.log10(255.0**2 / mse)
        assert psnr >= 30.0, (name, psnr)


def test_manifest_fields_and_shard_offsets(samples_clips):
    for e in read_manifest(samples_clips):
        assert {"clip_id", "source", "duration_s", "video", "audio", "shard", "members"} <= set(e)
        assert {"fps", "frames", "height", "width", "start_s", "encoding"} <= set(e["video"])
        if e["audio"]:
            assert {"sample_rate", "samples", "start_s"} <= set(e["audio"]) and e["audio"]["sample_rate"] == 16000
    # shards are plain tar files: the recorded offsets are where tar puts each member's bytes
    reader = open_cache(samples_clips)
    for shard in {e["shard"] for e in reader.entries.values()}:
        with tarfile.open(samples_clips / shard) as tar:
            for info in tar.getmembers():
                cid, _, kind = info.name.partition(".")
                cid, kind = (
                    (info.name.rsplit(".frames", 1)[0], "frames")
                    if info.name.endswith(".frames")
                    else (info.name.rsplit(".pcm16.npy", 1)[0], "pcm16.npy")
                )
                where = reader.entry(cid)["members"][kind]
                assert (info.offset_data, info.size) == (where["offset"], where["size"])


def test_start_times_recorded(samples_clips):
    entries = _by_file(samples_clips)
    assert entries["flipping_a_pancake.mkv"]["audio"]["start_s"] == pytest.approx(-0.007)
    assert entries["R6llTwEh07w.mp4"]["video"]["start_s"] == 0.0


def test_best_audio_stream_is_used_and_downmixed(tmp_path):
    """A file with two audio streams at one sample rate (stereo mp3 first, mono aac second) yields the one with more
    channels (the best-stream rule), downmixed to mono."""
    video, stereo_src = AV / "R6llTwEh07w.mp4", AV / "mmaction2_test.avi"
    from components.extract_clips import run

    src = tmp_path / "in"
    src.mkdir()
    muxed = src / "two_audio.mkv"
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-i",
            str(video),
            "-i",
            str(stereo_src),
            "-map",
            "0:v:0",
            "-map",
            "1:a:0",
            "-map",
            "0:a:0",
            "-c",
            "copy",
            "-t",
            "3",
            str(muxed),
        ],
        check=True,
        timeout=60,
    )
    run(str(src), str(tmp_path / "two"), workers=1)
    single = tmp_path / "single"
    single.mkdir()
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-i",
            str(video),
            "-i",
            str(stereo_src),
            "-map",
            "0:v:0",
            "-map",
            "1:a:0",
            "-c",
            "copy",
            "-t",
            "3",
            str(single / "one_audio.mkv"),
        ],
        check=True,
        timeout=60,
    )
    run(str(single), str(tmp_path / "one"), workers=1)
    two, one = read_audio(tmp_path / "two", "two_audio"), read_audio(tmp_path / "one", "one_audio")
    assert len(two) == len(one) and np.array_equal(two, one)
    raw = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(single / "one_audio.mkv"),
            "-map",
            "0:a:0",
            "-ac",
            "2",
            "-ar",
            "16000",
            "-f",
            "s16le",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    stereo = np.frombuffer(raw, "<i2").reshape(-1, 2).astype(np.float32) / 32767
    n = min(len(stereo), len(one))
    # downmix = channel mean (within int16 rounding)
    assert np.abs(stereo[:n].mean(axis=1) - one[:n]).max() < 2e-4
    assert json.loads((tmp_path / "two" / "report.json").read_text())["ok"] == 1
