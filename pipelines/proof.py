"""`make proof`: does XKD learn? Seeds x ablations on the AV-Digits corpus, probed along the way (issue 13).

    python -m pipelines.proof [--output outputs/proof] [--seeds 0,1,2] [--steps N] [--evals K]
        [--variants xkd,mae-only,no-alignment,mismatched] [--jobs 2]

Everything goes through the project's own steps, as separate processes (the same commands `dvc repro` runs):
build_avdigits (matched and mismatched pairing) -> extract_clips / cache_spectrograms -> pretrain (one run per
variant and seed, a checkpoint every steps/K) -> evaluate (svm, every checkpoint's student encoders on `fsdd`,
leave-one-speaker-out, and `digits-video`, folds by held-out image) + the controls (random init, log-mel / pixel
statistics, shuffled labels). Then `summary.json`, `proof.md` (the table, margins over each control, the verdict
against the issue's acceptance margins) and `learning_curves.png`.

The corpus, extraction and pretraining settings are `configs/avdigits.yaml`'s (one file, so that `make run`'s
avdigits stages can read the same ones; they are not wired into `make run` yet). Re-running resumes: finished
steps are skipped and a killed pretraining resumes from its newest checkpoint; other --steps or settings need
another --output. Each step's output goes to a log file beside its result; a failing step stops the proof with
that log's tail.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from xkd.errors import UsageError, cli, step_parser
from xkd.paths import REPO

# variant -> (corpus pairing, pretrain --set overrides); all through the same pretraining code
VARIANTS = {
    "xkd": ("matched", []),
    "mae-only": ("matched", ["model.weight_kd=0", "model.weight_da=0"]),
    "no-alignment": ("matched", ["model.weight_da=0"]),
    "mismatched": ("mismatched", []),
}
DATASETS = {"fsdd": "audio", "digits-video": "video"}
HAND_MADE = {"fsdd": "logmel-stats", "digits-video": "pixel-stats"}
ACCEPT_OVER_RANDOM = 10.0  # points over random init, both modalities (issue 13)
ACCEPT_OVER_LOGMEL = 5.0  # the target beyond: audio over log-mel statistics


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} proof: {msg}", file=sys.stderr, flush=True)


def step(cmd: list[str], log_file: Path, threads: int, done: Path | None = None) -> None:
    """Run one project step as its own process (output to `log_file`); skip it when `done` exists."""
    if done is not None and done.exists():
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(log_file, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        code = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    if code:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-15:])
        raise UsageError(f"step failed (exit {code}): {' '.join(cmd)}\n--- {log_file} (tail) ---\n{tail}")


def py(module: str, *args) -> list[str]:
    return [sys.executable, "-m", module, *[str(a) for a in args]]


def load_settings(path: Path = REPO / "configs" / "avdigits.yaml") -> dict:
    settings = yaml.safe_load(path.read_text())
    missing = [k for k in ("fsdd", "fsdd_recordings", "build", "extract", "proof") if k not in settings]
    if missing:
        raise UsageError(f"{path} lacks {', '.join(missing)}: the proof reads the corpus and run settings there")
    return settings


def build_caches(out: Path, params: dict, pairings: set[str], threads: int) -> None:
    """Corpus per pairing + its clip/spectrogram caches, the digits-video clips and the FSDD spectrograms."""
    av, ex = params, params["extract"]
    first = sorted(pairings)[0]
    for pairing in sorted(pairings):
        corpus, cache = out / "corpus" / pairing, out / "cache" / pairing
        build = [f"--{k.replace('_', '-')}={v}" for k, v in av["build"].items()]
        if pairing != first:  # digits-video is the same in every pairing: render it once
            build.append("--video-clips-per-image=0")
        step(
            py("components.build_avdigits", "--fsdd", av["fsdd"], "--output", corpus, "--pairing", pairing, *build),
            out / "logs" / f"build-{pairing}.log",
            threads,
        )
        step(
            py(
                "components.extract_clips",
                "--input",
                corpus / "pretrain",
                "--output",
                cache / "clips",
                "--fps",
                ex["fps"],
                "--short-side",
                ex["short_side"],
                "--require-audio",
                "--workers",
                ex["workers"],
            ),
            out / "logs" / f"extract-{pairing}.log",
            threads,
        )
        step(
            py(
                "components.cache_spectrograms",
                "--clips",
                cache / "clips",
                "--output",
                cache / "spectrograms",
                "--workers",
                ex["workers"],
            ),
            out / "logs" / f"spectrograms-{pairing}.log",
            threads,
        )
    any_corpus = out / "corpus" / first
    step(
        py(
            "components.extract_clips",
            "--input",
            any_corpus / "digits-video",
            "--output",
            out / "cache" / "digits-video" / "clips",
            "--fps",
            ex["fps"],
            "--short-side",
            ex["short_side"],
            "--workers",
            ex["workers"],
        ),
        out / "logs" / "extract-digits-video.log",
        threads,
    )
    step(
        py(
            "components.cache_spectrograms",
            "--input",
            av["fsdd_recordings"],
            "--output",
            out / "cache" / "fsdd" / "spectrograms",
            "--min-duration",
            0.1,
            "--workers",
            ex["workers"],
        ),
        out / "logs" / "cache-fsdd.log",
        threads,
    )


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    found = sorted((run / "checkpoints").glob("ckpt-*"))
    return [(int(d.name.split("-")[1]), d / "bundle") for d in found if (d / "bundle" / "config.json").exists()]


def evaluate(out: Path, dst: Path, dataset: str, threads: int, *extra) -> Path:
    """One `components.evaluate` (svm); skipped when its metrics.json exists."""
    metrics = dst / "metrics.json"
    cache = out / "cache" / dataset
    step(
        py(
            "components.evaluate",
            "--dataset",
            dataset,
            "--protocol",
            "svm",
            "--data",
            cache,
            "--output",
            dst,
            "--feature-cache",
            out / "cache" / "features",
            *extra,
        ),
        dst / "evaluate.log",
        threads,
        done=metrics,
    )
    return metrics


def pretrain_and_probe(out: Path, params: dict, variant: str, seed: int, steps: int, evals: int, threads: int) -> None:
    pairing, overrides = VARIANTS[variant]
    run = out / "runs" / variant / f"seed{seed}"
    cache = out / "cache" / pairing
    every = max(1, steps // evals)
    sets = [f"train.seed={seed}", f"checkpoint.every_steps={every}", f"checkpoint.keep={evals + 1}", *overrides]
    started = time.monotonic()
    step(
        py(
            "components.pretrain",
            "--config",
            params["proof"]["config"],
            "--clips",
            cache / "clips",
            "--spectrograms",
            cache / "spectrograms",
            "--output",
            run,
            "--max-steps",
            steps,
            *[a for s in sets for a in ("--set", s)],
        ),
        run / "pretrain.log",
        threads,
        done=run / "final" / "config.json",
    )
    minutes = (time.monotonic() - started) / 60
    for at, bundle in checkpoints(run):
        for dataset in DATASETS:
            evaluate(
                out,
                run / "eval" / f"step{at:06d}" / dataset,
                dataset,
                threads,
                "--encoder",
                bundle,
                "--role",
                "student",
            )
    log(f"{variant} seed {seed}: {steps} steps + probes done ({minutes:.1f} min pretraining)")


def controls(out: Path, bundle: Path, threads: int) -> None:
    """Hand-made features (no network), and through `bundle`'s architecture: random init (one, seeded by evaluate)
    and its own features with shuffled training labels (must land at chance)."""
    for dataset, hand in HAND_MADE.items():
        evaluate(out, out / "controls" / hand / dataset, dataset, threads, "--features", hand)
        for name in ("shuffled-labels", "random-init"):
            dst = out / "controls" / name / dataset
            evaluate(out, dst, dataset, threads, "--encoder", bundle, "--role", "student", "--features", name)


def _mean(path: Path) -> float | None:
    return json.loads(path.read_text())["mean"] if path.exists() else None


def collect(out: Path, variants: list[str], seeds: list[int]) -> dict:
    """Scores per variant/seed/step (fold means), the controls, and the final-step mean/std over seeds."""
    curves: dict = {v: {d: {} for d in DATASETS} for v in variants}
    for variant in variants:
        for seed in seeds:
            for at, _ in checkpoints(out / "runs" / variant / f"seed{seed}"):
                for dataset in DATASETS:
                    score = _mean(
                        out / "runs" / variant / f"seed{seed}" / "eval" / f"step{at:06d}" / dataset / "metrics.json"
                    )
                    if score is not None:
                        curves[variant][dataset].setdefault(at, {})[seed] = score
    ctl = {
        name: {d: _mean(out / "controls" / name / d / "metrics.json") for d in DATASETS}
        for name in ("random-init", "shuffled-labels", "logmel-stats", "pixel-stats")
    }
    final = {}
    for variant in variants:
        final[variant] = {}
        for dataset in DATASETS:
            steps = curves[variant][dataset]
            last = steps[max(steps)] if steps else {}
            vals = [last[s] for s in seeds if s in last]
            final[variant][dataset] = {
                "step": max(steps) if steps else None,
                "seeds": len(vals),
                "mean": float(np.mean(vals)) if vals else None,
                "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
            }
    return {"curves": curves, "controls": ctl, "final": final, "seeds": seeds}


def verdict(summary: dict) -> list[str]:
    """The acceptance margins of issue 13, measured: XKD over random init (both), audio over log-mel statistics."""
    xkd, ctl = summary["final"].get("xkd", {}), summary["controls"]
    lines = []
    for dataset, modality in DATASETS.items():
        got, rand = (xkd.get(dataset) or {}).get("mean"), ctl["random-init"][dataset]
        if got is None or rand is None:
            lines.append(f"{dataset}: incomplete (no XKD or random-init score yet)")
            continue
        margin = got - rand
        ok = "MET" if margin >= ACCEPT_OVER_RANDOM else "NOT met"
        lines.append(
            f"{dataset} ({modality}): XKD {got:.1f} vs random init {rand:.1f}: {margin:+.1f} points "
            f"(acceptance >= +{ACCEPT_OVER_RANDOM:g}: {ok})"
        )
    got, hand = (xkd.get("fsdd") or {}).get("mean"), ctl["logmel-stats"]["fsdd"]
    if got is not None and hand is not None:
        ok = "MET" if got - hand >= ACCEPT_OVER_LOGMEL else "NOT met"
        lines.append(
            f"fsdd: XKD {got:.1f} vs log-mel statistics {hand:.1f}: {got - hand:+.1f} points "
            f"(target >= +{ACCEPT_OVER_LOGMEL:g}: {ok})"
        )
    return lines


def table(summary: dict) -> str:
    def cell(entry):
        if entry is None or entry.get("mean") is None:
            return "-"
        spread = f" ± {entry['std']:.1f}" if entry.get("std") is not None else ""
        return f"{entry['mean']:.1f}{spread} (n={entry['seeds']}, step {entry['step']})"

    rows = [
        "| encoder | fsdd (audio, leave-one-speaker-out) | digits-video (video, held-out images) |",
        "|---|---|---|",
    ]
    for variant, per in summary["final"].items():
        rows.append(f"| {variant} | {cell(per['fsdd'])} | {cell(per['digits-video'])} |")
    for name, per in summary["controls"].items():
        rows.append(f"| control: {name} | {_fmt(per['fsdd'])} | {_fmt(per['digits-video'])} |")
    return "\n".join(rows)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(DATASETS), figsize=(11, 4), sharey=False)
    for ax, dataset in zip(axes, DATASETS):
        for variant, per in summary["curves"].items():
            steps = sorted(per[dataset])
            if not steps:
                continue
            means = [np.mean(list(per[dataset][s].values())) for s in steps]
            stds = [np.std(list(per[dataset][s].values()), ddof=1) if len(per[dataset][s]) > 1 else 0 for s in steps]
            line = ax.plot(steps, means, marker="o", label=variant)[0]
            ax.fill_between(steps, np.subtract(means, stds), np.add(means, stds), color=line.get_color(), alpha=0.15)
        styles = {"random-init": ":", "shuffled-labels": "--", HAND_MADE[dataset]: "-."}
        for name, style in styles.items():
            value = summary["controls"][name][dataset]
            if value is not None:
                ax.axhline(value, color="grey", linestyle=style, label=f"control: {name}")
        ax.set(title=f"{dataset} ({DATASETS[dataset]}), svm top-1", xlabel="pretraining step", ylabel="top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"AV-Digits proof: mean ± std over seeds {summary['seeds']} (band); controls grey")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_summary(out: Path, summary: dict, wall_s: float) -> None:
    lines = verdict(summary)
    (out / "summary.json").write_text(json.dumps({**summary, "verdict": lines, "wall_s": wall_s}, indent=1) + "\n")
    plot(summary, out / "learning_curves.png")
    md = [
        "# AV-Digits proof of learning",
        "",
        *[f"- {line}" for line in lines],
        "",
        table(summary),
        "",
        "Top-1 of a linear SVM on mean-pooled frozen student features (C chosen on a validation carve of the "
        "training folds, never on the test fold); `±` is the std over seeds (ddof 1) of the fold means; "
        f"controls: one evaluation each. Wall time {wall_s / 60:.1f} min.",
        "",
        "![learning curves](learning_curves.png)",
        "",
    ]
    (out / "proof.md").write_text("\n".join(md))


def run(
    output: str,
    seeds: list[int],
    steps: int | None,
    evals: int,
    variants: list[str],
    jobs: int,
    settings: str | None = None,
) -> dict:
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise UsageError(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if evals < 1 or jobs < 1 or not seeds:
        raise UsageError("--evals and --jobs must be >= 1 and --seeds non-empty")
    params = load_settings(Path(settings)) if settings else load_settings()
    steps = steps or params["proof"]["steps"]
    out = Path(output)
    started = time.monotonic()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    log(f"{len(variants)} variants x {len(seeds)} seeds, {steps} steps each, {jobs} at a time -> {out}")
    build_caches(out, params, {VARIANTS[v][0] for v in variants}, os.cpu_count() or 1)
    log("caches ready")
    work = [(v, s) for s in seeds for v in variants]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for f in [pool.submit(pretrain_and_probe, out, params, v, s, steps, evals, threads) for v, s in work]:
            f.result()
    first = out / "runs" / variants[0] / f"seed{seeds[0]}"
    controls(out, checkpoints(first)[-1][1], os.cpu_count() or 1)
    summary = collect(out, variants, seeds)
    write_summary(out, summary, time.monotonic() - started)
    for line in verdict(summary):
        log(line)
    log(f"wrote {out / 'proof.md'} and {out / 'learning_curves.png'}")
    return summary


def parser() -> argparse.ArgumentParser:
    ap = step_parser("pipelines.proof", __doc__)
    ap.add_argument("--output", default="outputs/proof", help="where corpus, caches, runs and the summary go")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated pretraining seeds")
    ap.add_argument(
        "--steps", type=int, default=None, help="pretraining steps per run (default: params.yaml proof.steps)"
    )
    ap.add_argument("--evals", type=int, default=4, help="probed checkpoints per run (the learning curve)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from " + ", ".join(VARIANTS))
    ap.add_argument("--settings", default=None, help="corpus/run settings YAML (default configs/avdigits.yaml)")
    ap.add_argument("--jobs", type=int, default=2, help="pretraining runs at a time (threads split between them)")
    return ap


@cli
def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds {a.seeds!r}: expected comma-separated integers") from None
    run(a.output, seeds, a.steps, a.evals, [v.strip() for v in a.variants.split(",") if v.strip()], a.jobs, a.settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
