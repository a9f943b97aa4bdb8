"""`python -m benchmarks.make_run`: the per-stage times it prints come from dvc's stage lines, and an existing
--keep directory is refused before anything is cloned. Nothing here is timed (the run itself is the benchmark)."""

from __future__ import annotations

import subprocess
import sys

from benchmarks.make_run import stage_times
from xkd.paths import REPO


def test_each_stage_lasts_until_the_next_one_starts():
    lines = [
        (0.5, "Verifying data sources"),
        (1.0, "Running stage 'extract_clips':"),
        (1.5, "> python -m components.extract_clips ..."),
        (4.0, "Running stage 'pretrain':"),
        (9.0, "Updating lock file 'dvc.lock'"),
    ]
    assert stage_times(lines, 10.0) == [("extract_clips", 3.0), ("pretrain", 6.0)]
    assert stage_times([(0.1, "Stage 'x' didn't change, skipping")], 1.0) == []


def test_an_existing_keep_directory_is_one_clear_error(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.make_run", "--keep", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "exists; name a new directory" in res.stderr
    assert list(tmp_path.iterdir()) == []
