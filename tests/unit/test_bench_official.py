"""`make bench-official` without an official checkout: it explains how to get one and succeeds (a skip, never a
failure), and a wrong path is one clear line, exit 2. Nothing here is timed."""

from __future__ import annotations

import os
import subprocess
import sys

from xkd.paths import REPO


def _run(env_extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XKD_OFFICIAL"}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.official"],
        cwd=REPO,
        env={**env, **env_extra},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_checkout_prints_how_to_get_it_and_exits_0():
    res = _run({})
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "skipped" in out and "XKD_OFFICIAL" in out
    assert "git clone https://github.com/pritamqu/XKD" in out and "checkout 806c75d" in out  # the pinned commit
    assert "make bench-official XKD_OFFICIAL=" in out and "av==" in out and "einops==" in out
    assert "CC-BY-NC" in out


def test_empty_value_is_the_same_skip():  # `make bench-official` with no XKD_OFFICIAL passes an empty string
    res = _run({"XKD_OFFICIAL": ""})
    assert res.returncode == 0 and "skipped" in res.stdout


def test_a_path_that_is_not_a_checkout_is_one_line_exit_2(tmp_path):
    res = _run({"XKD_OFFICIAL": str(tmp_path)})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: XKD_OFFICIAL={tmp_path} is not an XKD checkout (no codes/train/models/xkd.py)"
    ]
