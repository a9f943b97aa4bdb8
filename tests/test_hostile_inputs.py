"""Hostile folder contents (issue 16): hidden files are never silently dropped, and clip ids are unique.

Every test runs the real extract step in a subprocess (bounded by a timeout) on copies of real sample media.
"""

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

from sample_data import AV, REPO

from xkd.data.inputs import clip_ids


def _extract(src: Path, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict, list[dict]]:
    proc = subprocess.run(
        [sys.executable, "-m", "components.extract_clips", "--input", str(src), "--output", str(out), *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"] == report["ok"] + len(report["rejected"])
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]
    assert len(manifest) == report["ok"]
    return proc, report, manifest


def _remux(src: Path, dst: Path) -> None:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-map", "0", "-c", "copy", str(dst)],
        check=True,
        timeout=60,
    )


def test_hidden_files_are_processed_or_listed_never_dropped(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(AV / "R6llTwEh07w.mp4", src / "visible.mp4")
    shutil.copy(AV / "big_buck_bunny_432_433.webm", src / ".hidden.webm")
    shutil.copy(AV / "mmaction2_demo.mp4", src / ".hidden.mp4")
    (src / "._visible.mp4").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 200)  # a macOS AppleDouble sidecar
    (src / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 60)
    (src / ".cache").mkdir()
    shutil.copy(AV / "R6llTwEh07w.mp4", src / ".cache" / "copy.mp4")

    proc, report, manifest = _extract(src, tmp_path / "out", "--workers", "2", "--min-duration", "0.5")
    assert proc.returncode == 0, proc.stderr
    by_source = {Path(e["source"]).name: e["clip_id"] for e in manifest}
    assert by_source == {"visible.mp4": "visible", ".hidden.webm": ".hidden.webm", ".hidden.mp4": ".hidden.mp4"}
    assert [(Path(r["path"]).name, r["code"]) for r in report["rejected"]] == [("._visible.mp4", "unreadable")]
    ignored = {str(Path(p).relative_to(src)) for p in report["ignored_non_media"]}
    assert ignored == {".DS_Store", ".cache"}  # a hidden folder is not searched, but it is named in the report
    listed = {Path(e["source"]).name for e in manifest} | {Path(r["path"]).name for r in report["rejected"]}
    assert listed | {Path(p).name for p in report["ignored_non_media"]} == {p.name for p in src.iterdir()}


def test_colliding_names_get_unique_deterministic_ids_and_rerun_is_a_noop(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(AV / "R6llTwEh07w.mp4", src / "dup.mp4")
    _remux(AV / "big_buck_bunny_432_433.webm", src / "dup.webm")
    _remux(AV / "mmaction2_demo.mp4", src / "dup.mp4.mkv")
    shutil.copy(AV / "SOX5yA1l24A.mp4", src / "other.mp4")  # no collision: keeps today's id
    out = tmp_path / "out"

    proc, report, manifest = _extract(src, out, "--workers", "2", "--min-duration", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert report["inputs"] == 4 and report["ok"] == 4 and report["rejected"] == []
    ids = {Path(e["source"]).name: e["clip_id"] for e in manifest}
    assert ids == {"dup.mp4": "dup.mp4", "dup.webm": "dup.webm", "dup.mp4.mkv": "dup.mp4.mkv", "other.mp4": "other"}
    assert len({e["clip_id"] for e in manifest}) == len(manifest)

    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    proc2, report2, manifest2 = _extract(src, out, "--workers", "1", "--min-duration", "0.5")
    assert proc2.returncode == 0 and "nothing to do" in proc2.stderr, proc2.stderr
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before
    assert manifest2 == manifest and report2 == report


def test_clip_ids_unique_and_independent_of_listing_order():
    base = Path("/data/set")
    names = ["dup.mp4", "dup.webm", "dup.mp4.mkv", "sub/a.mp4", "sub/a.avi", "solo.mp4", "x.y.mp4", "x.y.z.mp4"]
    want = dict(zip(names, clip_ids([base / n for n in names])))
    assert len(set(want.values())) == len(names)
    rng = random.Random(0)
    for _ in range(200):
        perm = rng.sample(names, len(names))
        assert dict(zip(perm, clip_ids([base / n for n in perm]))) == want
    # inputs without a collision keep exactly today's id (the path without its extension)
    assert want["solo.mp4"] == "solo" and want["x.y.mp4"] == "x.y" and want["x.y.z.mp4"] == "x.y.z"
    assert want["sub/a.mp4"] == "sub/a.mp4" and want["sub/a.avi"] == "sub/a.avi"  # the long-standing rule
    assert clip_ids([base / "a.mp4", base / "b.mp4"]) == ["a", "b"]
