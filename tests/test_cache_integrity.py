"""Cache directory integrity under hostile or surprising directory contents (issue 16).

Every step runs in a subprocess with a timeout, so a hang fails the test instead of stalling the suite, and
each check asserts that no Python traceback escapes: the user sees a report or one `error:` line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.merge_caches import merge
from xkd.data.cache import CacheReader
from xkd.data.cache_build import read_manifest, read_report
from xkd.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 180


def _step(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", f"components.{module}", *args, "--workers", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _accounted(out: Path) -> dict:
    report = read_report(out)
    assert report["inputs"] == report["ok"] + len(report["rejected"])
    return report


def _snapshot(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def _make_av(path: Path, seconds: float = 2.0, freq: int = 440) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size=64x48:rate=10:duration={seconds}"]
    cmd += ["-f", "lavfi", "-i", f"sine=frequency={freq}:sample_rate=16000:duration={seconds}"]
    cmd += ["-c:v", "mpeg4", "-c:a", "aac", "-shortest", str(path)]
    subprocess.run(cmd, check=True, timeout=60, capture_output=True)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("integrity_media")
    _make_av(root / "a.mp4")
    _make_av(root / "b.mp4", freq=880)
    return root


@pytest.fixture()
def clip_cache(tmp_path, media) -> Path:
    out = tmp_path / "clips"
    proc = _step("extract_clips", "--input", str(media), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    report = _accounted(out)
    assert report["ok"] == 2 and report["params"]["step"] == "extract_clips/1"
    return out


# Case 1: an empty input folder gives a clean report with 0 inputs (exit 1: no usable clip), never KeyError.
@pytest.mark.parametrize("module", ["extract_clips", "cache_spectrograms"])
def test_empty_input_folder_gives_a_clean_report(tmp_path, module):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    proc = _step(module, "--input", str(tmp_path / "empty"), "--output", str(out))
    assert proc.returncode == 1, proc.stderr
    assert "0 inputs" in proc.stderr and "KeyError" not in proc.stderr
    report = _accounted(out)
    assert (report["inputs"], report["ok"], report["rejected"]) == (0, 0, [])
    assert read_manifest(out) == []
    # A second run on the same empty folder is a no-op with the same clean outcome.
    again = _step(module, "--input", str(tmp_path / "empty"), "--output", str(out))
    assert again.returncode == 1 and "0 inputs" in again.stderr


# Case 2: a manifest's shard path must stay inside the cache directory.
@pytest.mark.parametrize("shard", ["../../etc/passwd", "ABSOLUTE", "shard-000000.tar/../../secret.txt"])
def test_manifest_shard_outside_the_cache_is_refused(tmp_path, clip_cache, shard):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"top secret\n" * 100)
    if shard == "ABSOLUTE":
        shard = str(secret)
    entries = read_manifest(clip_cache)
    victim = entries[0]["clip_id"]
    entries[0]["shard"] = shard
    (clip_cache / "manifest.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))

    with pytest.raises(UsageError, match=victim) as err:
        CacheReader(clip_cache).member(victim, "frames")
    assert "shard" in str(err.value)

    # The spectrogram step reading that clip cache refuses it with one clear line (exit 2), writing nothing.
    specs = tmp_path / "specs"
    proc = _step("cache_spectrograms", "--clips", str(clip_cache), "--output", str(specs))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and victim in proc.stderr
    assert not (specs / "manifest.jsonl").exists()


def test_merged_cache_beside_its_partitions_still_reads(tmp_path, media):
    """The confinement keeps merge_caches' documented layout: partitions beside the merged directory."""
    part = tmp_path / "part-000"
    assert _step("extract_clips", "--input", str(media), "--output", str(part)).returncode == 0
    merged = tmp_path / "merged"
    merge(merged, [part])
    reader = CacheReader(merged)
    assert all(e["shard"].startswith("../part-000/") for e in reader.entries.values())
    assert all(len(reader.jpegs(cid)) > 0 for cid in reader.ids())


# Case 3: unknown files matching the shard glob are ignored and never deleted.
def test_stray_shard_like_file_is_tolerated_and_kept(tmp_path, media, clip_cache):
    stray = clip_cache / "shard-backup.tar"
    stray.write_bytes(b"user's backup, not the cache's\n")
    before = stray.read_bytes()
    more = tmp_path / "more"
    shutil.copytree(media, more)
    _make_av(more / "c.mp4", freq=660)  # a new input forces writing a shard and pruning stale ones
    proc = _step("extract_clips", "--input", str(more), "--output", str(clip_cache))
    assert proc.returncode == 0, proc.stderr
    report = _accounted(clip_cache)
    assert report["ok"] == 3
    assert stray.read_bytes() == before
    assert report["shard_bytes"] == sum(p.stat().st_size for p in clip_cache.glob("shard-0*.tar"))
    reader = CacheReader(clip_cache)
    assert all(len(reader.jpegs(cid)) > 0 for cid in reader.ids())


# Case 4: --output on another step's cache is refused before anything is touched.
def test_spectrograms_output_on_a_clip_cache_is_refused(clip_cache):
    before = _snapshot(clip_cache)
    proc = _step("cache_spectrograms", "--clips", str(clip_cache), "--output", str(clip_cache))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "extract_clips" in lines[0], proc.stderr
    assert _snapshot(clip_cache) == before


def test_extract_clips_output_on_a_spectrogram_cache_is_refused(tmp_path, media, clip_cache):
    specs = tmp_path / "specs"
    proc = _step("cache_spectrograms", "--clips", str(clip_cache), "--output", str(specs))
    assert proc.returncode == 0, proc.stderr
    assert _accounted(specs)["ok"] == 2
    before = _snapshot(specs)
    proc = _step("extract_clips", "--input", str(media), "--output", str(specs))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "cache_spectrograms" in lines[0], proc.stderr
    assert _snapshot(specs) == before


def test_other_kind_is_recognised_from_the_manifest_without_a_report(tmp_path, media, clip_cache):
    """A cache whose report.json is gone (e.g. copied without it) is still recognised by its manifest."""
    specs = tmp_path / "specs"
    assert _step("cache_spectrograms", "--clips", str(clip_cache), "--output", str(specs)).returncode == 0
    (specs / "report.json").unlink()
    before = _snapshot(specs)
    proc = _step("extract_clips", "--input", str(media), "--output", str(specs))
    assert proc.returncode == 2 and "cache_spectrograms" in proc.stderr, proc.stderr
    assert _snapshot(specs) == before
