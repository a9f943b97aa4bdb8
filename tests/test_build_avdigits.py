"""AV-Digits builder (components.build_avdigits): real, deterministic media whose labels never reach pretraining.

Small builds (12 pretrain clips over digits 0-2, a few held-out images) of the vendored FSDD; every check reads
the files back with ffprobe/ffmpeg.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from components.build_avdigits import main, run
from xkd.paths import REPO

FSDD = REPO / "data" / "fsdd"
SMALL = {"clips": 12, "digits": "0,1,2", "video_images": 3, "video_clips_per_image": 2, "workers": 1}
IMAGE_SPLIT = 1797 // 2
SPEAKERS = ("george", "jackson", "lucas", "nicolas")


def _build(out: Path, **overrides) -> dict:
    return run(str(FSDD), str(out), **{"seed": 0, **SMALL, **overrides})


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root except build.json (which records tool versions, not content)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "build.json"
    }


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _probe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def _decode(path: Path, *args: str) -> bytes:
    return subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), *args, "pipe:"], capture_output=True, check=True
    ).stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("avdigits") / "seed0"
    summary = _build(out)
    assert summary["up_to_date"] is False and summary["pretrain"] == 12 and summary["digits_video"] == 6
    return out


@pytest.fixture(scope="module")
def fsdd_split() -> dict[str, dict]:
    return {row["filename"]: row for row in _rows(FSDD / "fsdd_labels.csv")}


@pytest.fixture(scope="module")
def targets() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target


def test_vendored_fsdd_matches_its_sha256_list_and_keeps_its_licence():
    expected = dict(line.split("\t") for line in (FSDD / "SHA256.tsv").read_text().splitlines() if line)
    wavs = sorted(p.name for p in (FSDD / "recordings").iterdir())
    assert len(wavs) == 2000 and sorted(expected) == wavs
    for name in wavs:
        assert hashlib.sha256((FSDD / "recordings" / name).read_bytes()).hexdigest() == expected[name], name
    readme = (FSDD / "README.md").read_text()
    assert "CC BY-SA 4.0" in readme and "Vendored into this project" in readme


def test_same_seed_is_byte_identical_and_rerun_is_a_no_op(built, tmp_path, capsys):
    again = tmp_path / "again"
    _build(again)
    assert _tree(again) == _tree(built)
    stamps = {p: p.stat().st_mtime_ns for p in built.rglob("*")}
    argv = ["--fsdd", str(FSDD), "--output", str(built), "--seed", "0", "--clips", "12", "--digits", "0,1,2"]
    assert main([*argv, "--video-images", "3", "--video-clips-per-image", "2", "--workers", "1"]) == 0
    assert "up to date" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in built.rglob("*")} == stamps  # nothing rewritten


def test_another_seed_or_a_changed_arg_rebuilds_different_files(built, tmp_path):
    out = tmp_path / "other"
    shutil.copytree(built, out)
    reference = _tree(out)
    summary = _build(out, seed=1)  # same folder, changed arg: rebuilt, not skipped
    assert summary["up_to_date"] is False
    other = _tree(out)
    assert set(other) == set(reference) == set(_tree(built))
    assert all(other[f] != reference[f] for f in other if f.endswith(".mp4"))
    assert json.loads((out / "build.json").read_text())["args"]["seed"] == 1


def test_clips_are_real_h264_aac_media_of_the_promised_shape(built):
    pretrain = sorted((built / "pretrain").iterdir())
    assert len(pretrain) == 12
    for path in pretrain:
        info = _probe(path)
        kinds = {s["codec_type"]: s for s in info["streams"]}
        assert sorted(kinds) == ["audio", "video"], path.name
        video, audio = kinds["video"], kinds["audio"]
        assert (video["codec_name"], video["pix_fmt"], video["width"], video["height"]) == ("h264", "yuv420p", 128, 128)
        assert video["r_frame_rate"] == "25/1"
        assert (audio["codec_name"], audio["sample_rate"], audio["channels"]) == ("aac", "16000", 1)
        assert abs(float(info["format"]["duration"]) - 4.5) < 0.1
    video_only = sorted((built / "digits-video").iterdir())
    assert len(video_only) == 6
    for path in video_only:
        info = _probe(path)
        assert [s["codec_type"] for s in info["streams"]] == ["video"], path.name  # no audio stream at all
        assert info["streams"][0]["codec_name"] == "h264" and info["streams"][0]["width"] == 128


def _intervals(row: dict) -> list[tuple[float, float]]:
    return list(zip(map(float, row["onsets_s"].split(";")), map(float, row["offsets_s"].split(";")), strict=True))


def test_digit_brightens_exactly_while_it_is_spoken(built):
    for row in _rows(built / "pretrain_labels.csv")[:4]:
        path = built / "pretrain" / row["clip"]
        frames = np.frombuffer(_decode(path, "-f", "rawvideo", "-pix_fmt", "gray"), np.uint8).reshape(-1, 128, 128)
        brightness = np.sort(frames.reshape(len(frames), -1), axis=1)[:, -20:].mean(1)  # the digit's brightest ink
        t = np.arange(len(frames)) / 25
        spoken = np.zeros(len(frames), bool)
        near_edge = np.zeros(len(frames), bool)
        for on, off in _intervals(row):
            spoken |= (t >= on) & (t < off)
            near_edge |= (np.abs(t - on) < 0.05) | (np.abs(t - off) < 0.05)
        loud, quiet = brightness[spoken & ~near_edge], brightness[~spoken & ~near_edge]
        assert len(loud) >= 3 and len(quiet) >= 10
        assert loud.min() > quiet.max() + 40, (row["clip"], loud.min(), quiet.max())
        # and the audio track is loud over the same intervals (the timing is shared)
        pcm = np.frombuffer(_decode(path, "-f", "s16le", "-ac", "1", "-ar", "16000"), "<i2").astype(float)
        ts = np.arange(len(pcm)) / 16000
        in_speech = np.zeros(len(pcm), bool)
        for on, off in _intervals(row):
            in_speech |= (ts >= on) & (ts < off)
        rms_in, rms_out = np.sqrt((pcm[in_speech] ** 2).mean()), np.sqrt((pcm[~in_speech] ** 2).mean())
        assert rms_in > 10 * rms_out, (row["clip"], rms_in, rms_out)


def test_splits_are_disjoint(built, fsdd_split, targets):
    rows = _rows(built / "pretrain_labels.csv")
    assert [r["digit_audio"] for r in rows] == ["0", "1", "2"] * 4  # balanced over digits ...
    assert sorted(r["speaker"] for r in rows) == sorted(SPEAKERS * 3)  # ... and speakers
    for row in rows:
        recordings = row["recordings"].split(";")
        assert len(recordings) == len(set(recordings)) == 2  # --utterances 2, different recordings
        for name in recordings:
            meta = fsdd_split[name]
            assert meta["split"] == "train" and int(meta["index"]) >= 5, name  # never an FSDD test recording
            assert (meta["digit"], meta["speaker"]) == (row["digit_audio"], row["speaker"])
        image = int(row["image"])
        assert image < IMAGE_SPLIT and targets[image] == int(row["digit_video"]) == int(row["digit_audio"])
    pattern = re.compile(r"^(\d)_(\d{4})_(\d)\.mp4$")
    for path in (built / "digits-video").iterdir():
        digit, image, _ = map(int, pattern.match(path.name).groups())
        assert image >= IMAGE_SPLIT and targets[image] == digit, path.name  # only held-out images


def test_labels_never_reach_pretraining(built):
    assert not list((built / "pretrain").glob("*.csv")) and (built / "pretrain_labels.csv").is_file()
    names = sorted(p.name for p in (built / "pretrain").iterdir())
    assert all(re.fullmatch(r"clip_\d{5}\.mp4", n) for n in names), names
    rows = _rows(built / "pretrain_labels.csv")
    tags = set()
    for row in rows:
        path = built / "pretrain" / row["clip"]
        info = _probe(path)
        tags.add(json.dumps([info["format"].get("tags"), [s.get("tags") for s in info["streams"]]], sort_keys=True))
        data = path.read_bytes().lower()
        for word in (*SPEAKERS, b".wav", row["recordings"].split(";")[0]):
            assert (word.encode() if isinstance(word, str) else word) not in data, (row["clip"], word)
    assert len(tags) == 1, tags  # the same container metadata for every digit and speaker: nothing to leak


def test_mismatched_pairing_never_shows_the_spoken_digit(tmp_path, targets):
    out = tmp_path / "mismatched"
    _build(out, pairing="mismatched", video_clips_per_image=0)
    rows = _rows(out / "pretrain_labels.csv")
    assert len(rows) == 12 and [r["digit_audio"] for r in rows] == ["0", "1", "2"] * 4
    for row in rows:
        assert row["digit_video"] != row["digit_audio"] and row["digit_video"] in ("0", "1", "2")
        assert targets[int(row["image"])] == int(row["digit_video"])
    assert not list((out / "digits-video").iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--clips", "0"], "--clips"),
        (["--utterances", "9"], "--utterances"),
        (["--digits", "3", "--pairing", "mismatched"], "at least two --digits"),
        (["--digits", "1,x"], "--digits"),
        (["--seed", "-1"], "--seed"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_bad_arguments_fail_with_one_line_and_exit_2(tmp_path, capsys, args, message):
    base = ["--fsdd", str(FSDD), "--output", str(tmp_path / "out"), "--seed", "0"]
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err


def test_missing_fsdd_folder_is_a_usage_error(tmp_path, capsys):
    assert main(["--fsdd", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), "--seed", "0"]) == 2
    assert "--fsdd" in capsys.readouterr().err


@pytest.mark.slow
def test_bytes_do_not_depend_on_the_number_of_workers(built, tmp_path):
    _build(tmp_path / "two", workers=2)
    assert _tree(tmp_path / "two") == _tree(built)


@pytest.mark.slow
def test_pipeline_extracts_every_pretrain_clip(built, tmp_path):
    from xkd.data.cache_build import read_report

    clips = tmp_path / "clips"
    cmd = [sys.executable, "-m", "components.extract_clips", "--input", str(built / "pretrain")]
    subprocess.run([*cmd, "--output", str(clips), "--require-audio", "--workers", "1"], check=True)
    report = read_report(clips)
    assert report["inputs"] == report["ok"] == 12 and report["rejected"] == []
