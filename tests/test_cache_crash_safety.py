"""Crash safety of the cache steps (issue 16): a run killed with SIGKILL loses only the files in flight, the
re-run reuses what was committed and ends with the same cache as an uninterrupted run; manifest and report
never stay out of step; a file listed twice is one input.

Media are generated with ffmpeg; every step runs as a subprocess (`python -m components.<step>`), as users run it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from test_cache_integrity import REPO, _accounted, _make_av, _step

from components.extract_clips import run as extract
from xkd.data import cache_build
from xkd.data.cache import CacheReader
from xkd.data.cache_build import read_manifest, read_report

pytestmark = pytest.mark.slow  # several full extraction runs over 8 generated files

FILES = 8
JOURNAL = ".journal.jsonl"  # where a step commits each finished input (xkd.data.cache_build.JOURNAL)
KILL_AFTER = 3  # committed inputs before the kill


@pytest.fixture(scope="module")
def eight(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash_media")
    for n in range(FILES):
        _make_av(root / f"clip{n}.mp4", seconds=4.0, freq=300 + 60 * n)
    return root


def _committed(out: Path) -> int:
    """Inputs the running step has committed so far (complete journal lines naming an entry)."""
    path = out / JOURNAL
    if not path.is_file():
        return 0
    lines = path.read_text().split("\n")[:-1]  # the last piece may be a line still being written
    return sum(1 for line in lines if '"entry"' in line)


def _kill_after_commits(module: str, args: list[str], out: Path, commits: int) -> int:
    """Start the step, SIGKILL it (with its ffmpeg children) once `commits` inputs are committed; return how many
    were committed at the kill. Fails if the step finishes first (nothing was committed along the way)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    log = out.parent / f"{out.name}.stderr"
    with open(log, "w") as err:
        proc = _start(module, args, out, env, err)
    deadline = time.monotonic() + 240
    try:
        while _committed(out) < commits:
            assert proc.poll() is None, f"{module} ended before {commits} inputs were committed: {log.read_text()}"
            assert time.monotonic() < deadline, f"{module} committed nothing within 240 s"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"{module} exited with {proc.returncode} before the kill"
    return _committed(out)


def _start(module: str, args: list[str], out: Path, env: dict, err) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", f"components.{module}", *args, "--output", str(out), "--workers", "1"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=err,
        start_new_session=True,  # its own process group: the kill reaches the ffmpeg it is running too
    )


def manifest_sha256(out: Path) -> str:
    return hashlib.sha256((out / "manifest.jsonl").read_bytes()).hexdigest()


def _content(out: Path) -> dict[str, dict]:
    """Each clip's manifest fields (without where its bytes sit) and the bytes of every member."""
    reader = CacheReader(out)
    content = {}
    for cid, e in reader.entries.items():
        fields = {k: v for k, v in e.items() if k not in ("shard", "members")}
        content[cid] = {**fields, "bytes": {m: reader.member(cid, m) for m in sorted(e["members"])}}
    return content


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp") or p.name == JOURNAL)


@pytest.mark.parametrize(
    "module, source",
    [("extract_clips", ["--input"]), ("cache_spectrograms", ["--input"])],
    ids=["extract_clips", "cache_spectrograms"],
)
def test_kill_mid_run_then_rerun_reuses_committed_entries(tmp_path, eight, module, source):
    args = [*source, str(eight)]
    whole = tmp_path / "uninterrupted"
    assert _step(module, *args, "--output", str(whole)).returncode == 0
    assert _accounted(whole)["ok"] == FILES

    out = tmp_path / "killed"
    committed = _kill_after_commits(module, args, out, KILL_AFTER)
    assert KILL_AFTER <= committed < FILES
    # Where the kill lands within the file in flight is chance; make it the worst case every time: half of a
    # member written into the unfinished shard, half a line into the journal.
    (unfinished,) = out.glob(".shard-*.tar.tmp")
    with open(unfinished, "ab") as fh:
        fh.write(b"\x00partial tar header and payload of the file in flight" * 40)
    with open(out / JOURNAL, "a") as fh:
        fh.write('{"entry": {"clip_id": "clip7", "shard": "shard-0')

    proc = _step(module, *args, "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    report = _accounted(out)
    assert report["inputs"] == FILES and report["ok"] == FILES
    assert report["reused_from_previous_run"] >= committed
    assert report["manifest_sha256"] == manifest_sha256(out)
    assert _content(out) == _content(whole)  # same entries, same bytes (the salvaged shard reads back whole)
    assert _leftovers(out) == []  # no orphan temporary shard, no journal once the manifest holds it all
    # every shard is a whole tar that standard readers list, holding exactly the manifest's members
    names = set()
    for shard in out.glob("shard-*.tar"):
        with tarfile.open(shard) as tar:
            names |= set(tar.getnames())
    assert names == {f"{e['clip_id']}.{m}" for e in read_manifest(out) for m in e["members"]}
    assert sum(p.stat().st_size for p in out.glob("shard-*.tar")) == report["shard_bytes"]

    # and now the cache is complete: one more run is a no-op
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = _step(module, *args, "--output", str(out))
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def _kill_before_report(monkeypatch):
    """Make the next build stop dead (as a SIGKILL would) right after the manifest is replaced."""
    real = cache_build._atomic_write

    def write(path: Path, text: str) -> None:
        if path.name == cache_build.REPORT:
            raise SystemExit("killed between manifest.jsonl and report.json")
        real(path, text)

    monkeypatch.setattr(cache_build, "_atomic_write", write)


def test_kill_between_manifest_and_report_is_corrected_by_the_next_run(tmp_path, eight, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for n in range(2):
        os.symlink(eight / f"clip{n}.mp4", src / f"clip{n}.mp4")
    out = tmp_path / "out"
    extract(str(src), str(out))
    os.symlink(eight / "clip2.mp4", src / "clip2.mp4")
    with monkeypatch.context() as m:
        _kill_before_report(m)
        with pytest.raises(SystemExit):
            extract(str(src), str(out))
    assert len(read_manifest(out)) == 3 and read_report(out)["ok"] == 2  # the stale pair a kill leaves

    report = extract(str(src), str(out))
    assert report["ok"] == 3 and report["reused_from_previous_run"] == 3  # nothing decoded again
    assert read_report(out) == report and report["manifest_sha256"] == manifest_sha256(out)
    assert {e["clip_id"] for e in read_manifest(out)} == {"clip0", "clip1", "clip2"}
    assert _leftovers(out) == []


def test_a_report_older_than_the_manifest_is_rewritten(tmp_path, eight):
    """A report.json that does not describe the manifest (restored from a backup, or written by a run before
    its manifest was replaced) is never taken as up to date."""
    src = tmp_path / "in"
    src.mkdir()
    for n in range(2):
        os.symlink(eight / f"clip{n}.mp4", src / f"clip{n}.mp4")
    out = tmp_path / "out"
    extract(str(src), str(out))
    old = (out / "report.json").read_text()
    os.symlink(eight / "clip2.mp4", src / "clip2.mp4")
    extract(str(src), str(out))
    (out / "report.json").write_text(old)

    proc = _step("extract_clips", "--input", str(src), "--output", str(out))
    assert proc.returncode == 0 and "nothing to do" not in proc.stderr, proc.stderr
    report = _accounted(out)
    assert report["ok"] == 3 == len(read_manifest(out))
    assert report["manifest_sha256"] == manifest_sha256(out)


def test_entries_of_other_parameters_are_not_reused_after_a_kill_before_the_report(tmp_path, eight, monkeypatch):
    """Killed between manifest and report while changing parameters: the old report's parameters must not
    vouch for the new manifest's entries."""
    src = tmp_path / "in"
    src.mkdir()
    os.symlink(eight / "clip0.mp4", src / "clip0.mp4")
    out = tmp_path / "out"
    extract(str(src), str(out))  # short side 112 -> 64x48 stays 149x112
    with monkeypatch.context() as m:
        _kill_before_report(m)
        with pytest.raises(SystemExit):
            extract(str(src), str(out), short_side=64)
    report = extract(str(src), str(out))
    assert report["reused_from_previous_run"] == 0
    assert [e["video"]["height"] for e in read_manifest(out)] == [112]


def test_a_file_listed_twice_is_one_input(tmp_path, eight):
    listing = tmp_path / "list.txt"
    a, b = eight / "clip0.mp4", eight / "clip1.mp4"
    # the same line twice, and the same file by another spelling of its path
    listing.write_text(f"{a}\n{b}\n{a}\n{eight}/./{a.name}\n")
    out = tmp_path / "out"
    proc = _step("extract_clips", "--input", str(listing), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    manifest = read_manifest(out)
    assert sorted(e["clip_id"] for e in manifest) == ["clip0", "clip1"]  # the ids of a list naming each once
    report = _accounted(out)
    assert report["inputs"] == 2 and report["ok"] == 2 and report["duplicate_inputs"] == 2
    assert [d["same_as"] for d in report["duplicate_sources"]] == [str(a), str(a)]
    assert "2 input(s) listed more than once" in proc.stderr
    # the re-run is a no-op
    again = _step("extract_clips", "--input", str(listing), "--output", str(out))
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr
    assert json.loads((out / "report.json").read_text()) == report
