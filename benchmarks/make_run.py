"""`make run` wall time from a clean checkout (issue 17).

    python -m benchmarks.make_run [--keep DIR]

Clones this repository's committed HEAD into a new directory (no outputs, caches or MLflow store: what a new
user has), then runs `dvc repro` there, which is what `make run` does after its install step, with this
environment's interpreter and packages (the install is timed by `make install`, not here). Prints the wall time
of the whole run and of each stage as dvc starts it, the peak RSS of the largest process, and the load average
before and after, so a figure taken on a busy machine says so. The checkout is deleted unless `--keep` names
where to leave it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xkd.errors import UsageError, cli
from xkd.paths import REPO


def stage_times(lines: list[tuple[float, str]], end: float) -> list[tuple[str, float]]:
    """(stage, seconds) from dvc's "Running stage 'X':" lines, each stage lasting until the next one starts."""
    starts = [(t, line.split("'")[1]) for t, line in lines if line.startswith("Running stage '")]
    return [(name, (starts[i + 1][0] if i + 1 < len(starts) else end) - t) for i, (t, name) in enumerate(starts)]


@cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="clone here and keep it (default: a temporary directory, deleted)")
    args = ap.parse_args(argv)
    if args.keep is not None and args.keep.exists():
        raise UsageError(f"--keep {args.keep} exists; name a new directory")
    work = args.keep or Path(tempfile.mkdtemp(prefix="xkd-make-run-")) / "repo"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(work)], check=True)
    # the stages call `python -m components...`: this interpreter's bin first, as the Makefile puts .venv/bin
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.update(DVC_NO_ANALYTICS="1", PYTHONDONTWRITEBYTECODE="1")
    print(f"dvc repro in a clean clone of {commit.stdout.strip()} ({work}); load average {os.getloadavg()[0]:.1f}")
    lines: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    try:
        with subprocess.Popen(
            [str(Path(sys.executable).parent / "dvc"), "repro"],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as proc:
            for line in proc.stdout:
                lines.append((time.perf_counter() - t0, line.rstrip()))
                if line.startswith("Running stage '"):
                    print(f"  {lines[-1][0]:7.1f} s  {line.rstrip()}", flush=True)
        total = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = "\n".join(line for _, line in lines[-15:])
            raise UsageError(f"dvc repro failed (exit {proc.returncode}) in {work}:\n{tail}")
    finally:
        if args.keep is None:
            shutil.rmtree(work.parent, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(
        f"make run (dvc repro, clean clone): {total:.0f} s wall = {total / 60:.1f} min, peak RSS {peak:.2f} GB, "
        f"load average after {os.getloadavg()[0]:.1f}"
    )
    for name, seconds in stage_times(lines, total):
        print(f"  {name:32s} {seconds:7.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
