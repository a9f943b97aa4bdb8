"""The official XKD code and ours side by side, in one run (`make bench-official`, issue 17).

    XKD_OFFICIAL=/path/to/XKD python -m benchmarks.official [--rounds 3] [--steps 3] [--threads 2] [--passes 2]

Each measurement is its own process (benchmarks/official_workers.py), and the implementations alternate
within every round (the order flips each round), so a change in the machine's load hits both alike:
- train step: base XKD, batch 2, fp32, `--threads` threads, the same random inputs, one warm-up step, then
  `--steps` timed optimiser steps (forward, backward, clip, AdamW, EMA) per process;
- loader: one pretraining sample (global + local video and audio views) per call, on one pinned core with
  one thread, over the sample videos both loaders can read; ours with waveform audio and with cached
  spectrograms, its photometric half (done on the GPU in training) timed apart.
Printed per implementation: min / median over all rounds (wall, and CPU time of the process), the ratio of
the medians (ours / official: below 1 is faster), peak RSS, and the 1-minute load average seen.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from xkd.errors import UsageError, cli

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_COMMIT = "806c75d"  # docs/xkd_spec.md: the commit every official figure in this project comes from
HOW_TO_GET = f"""benchmarks.official: skipped, XKD_OFFICIAL is not set. It compares this project with the official
XKD code (github.com/pritamqu/XKD, licence CC-BY-NC: read from your disk, never copied into this repository).
To run it:
  git clone https://github.com/pritamqu/XKD /tmp/xkd-official && git -C /tmp/xkd-official checkout {OFFICIAL_COMMIT}
  .venv/bin/pip install --no-deps --target /tmp/xkd-official/.bench-deps av==18.1.0 einops==0.8.2
  make run        # builds data/cache/samples-av, the cache our loader reads
  make bench-official XKD_OFFICIAL=/tmp/xkd-official
(XKD_OFFICIAL_DEPS overrides where PyAV and einops are looked for; default $XKD_OFFICIAL/.bench-deps)"""
SAMPLES = REPO / "data" / "samples" / "av"


def worker(what: str, extra: list[str], env: dict, core: int | None = None):
    cmd = [sys.executable, "-m", "benchmarks.official_workers", what, *extra]
    if core is not None:
        cmd = ["taskset", "-c", str(core), *cmd] if shutil.which("taskset") else cmd
    load = os.getloadavg()[0]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if res.returncode != 0:
        last = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"
        raise UsageError(f"{what} failed: {last}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if isinstance(out, dict):
        out["load"] = (load, os.getloadavg()[0])
    return out


def interleave(names: list[str], args, extra: list[str], env: dict, core: int | None = None) -> dict:
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            runs[name].append(worker(name, extra, env, core))
            print(f"  round {r + 1}/{args.rounds} {name}: done", file=sys.stderr, flush=True)
    return runs


def summary(runs: list[dict], key: str = "seconds") -> dict:
    values = [v for r in runs for v in r[key]]
    loads = [x for r in runs for x in r["load"]]
    return {
        "min": min(values),
        "median": statistics.median(values),
        "n": len(values),
        "rss": max(r["peak_rss_gb"] for r in runs),
        "load": (min(loads), max(loads)),
    }


def table(title: str, unit: str, scale: float, rows: list[tuple[str, dict, dict]], baseline: str) -> None:
    print(title)
    print(
        f"  {'implementation':<34} {'wall min / median':>20} {'CPU min / median':>20} {'x official':>10} {'RSS GB':>7}"
    )
    base = dict((n, (w, c)) for n, w, c in rows)[baseline]
    for name, wall, cpu in rows:
        ratio = f"{wall['median'] / base[0]['median']:.2f}/{cpu['median'] / base[1]['median']:.2f}"
        print(
            f"  {name:<34} {wall['min'] * scale:>8.1f} / {wall['median'] * scale:>7.1f} {unit:<3}"
            f"{cpu['min'] * scale:>8.1f} / {cpu['median'] * scale:>7.1f} {unit:<3} {ratio:>10} {wall['rss']:>7.2f}"
        )
    loads = [x for _, w, _ in rows for x in w["load"]]
    print(
        f"  ratio = ours median / official median (wall/CPU); n = {rows[0][1]['n']} per row; "
        f"load average {min(loads):.1f}-{max(loads):.1f}"
    )


def bench_step(args, env: dict) -> None:
    env = {**env, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    extra = ["--threads", str(args.threads), "--steps", str(args.steps)]
    runs = interleave(["official-step", "ours-step"], args, extra, env)
    rows = [(n, summary(runs[n]), summary(runs[n], "cpu_seconds")) for n in runs]
    table(
        f"Train step, base XKD, batch 2, fp32, {args.threads} threads ({args.rounds} rounds x {args.steps} steps)",
        "s",
        1.0,
        rows,
        "official-step",
    )


def bench_loader(args, env: dict) -> None:
    env = {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    clips = REPO / "data" / "cache" / "samples-av" / "clips"
    if not (clips / "manifest.jsonl").exists():
        raise UsageError(f"{clips} is missing: run `make run` first (it builds the cache our loader reads)")
    sys.path.insert(0, str(REPO))
    from xkd.data.cache import CacheReader

    with_audio = [str((REPO / e["source"]).resolve()) for e in CacheReader(clips).entries.values() if e.get("audio")]
    # the official loader drops what it cannot decode (e.g. Matroska); both sides get the files it reads
    files = worker("official-loader", ["--check-files", "--files", ",".join(with_audio)], env)
    if not files:
        raise UsageError("the official loader could read none of the sample videos (is PyAV in XKD_OFFICIAL_DEPS?)")
    core = args.core if args.core is not None else max(os.sched_getaffinity(0))
    extra = ["--threads", "1", "--passes", str(args.passes), "--files", ",".join(files)]
    runs = interleave(["official-loader", "ours-loader", "ours-spec-loader"], args, extra, env, core)
    rows = [(n, summary(runs[n]), summary(runs[n], "cpu_seconds")) for n in runs]
    photometric = [summary(runs[n], "photometric_cpu_seconds") for n in ("ours-loader", "ours-spec-loader")]
    table(
        f"Loader, one sample per call, core {core} pinned, 1 thread, {len(files)} videos both read "
        f"({', '.join(Path(f).name for f in files)})",
        "ms",
        1000.0,
        rows,
        "official-loader",
    )
    ph = statistics.median([photometric[0]["median"], photometric[1]["median"]])
    print(f"  ours' photometric half (after collation; on the GPU in training) on this core: {1000 * ph:.1f} ms CPU")


@cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (>= 3 for the recorded figures)")
    ap.add_argument("--steps", type=int, default=3, help="timed train steps per process")
    ap.add_argument("--threads", type=int, default=2, help="threads for the train step (both implementations)")
    ap.add_argument("--passes", type=int, default=2, help="loader: passes over the videos per process")
    ap.add_argument("--core", type=int, help="loader: the core to pin (default: the last one this process may use)")
    ap.add_argument("--only", choices=("step", "loader"), help="run one comparison")
    args = ap.parse_args(argv)
    official = os.environ.get("XKD_OFFICIAL")
    if not official:
        print(HOW_TO_GET)
        return 0
    if not (Path(official).expanduser() / "codes" / "train" / "models" / "xkd.py").is_file():
        raise UsageError(f"XKD_OFFICIAL={official} is not an XKD checkout (no codes/train/models/xkd.py)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    print(f"official: {official}  load average now: {os.getloadavg()[0]:.1f}  cores: {os.cpu_count()}")
    if args.only in (None, "step"):
        bench_step(args, env)
    if args.only in (None, "loader"):
        bench_loader(args, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
