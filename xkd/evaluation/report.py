"""The results report's content: every evaluation next to the paper's number (data/paper_results.yaml), as a
Markdown table and PNG plots. Written by the `components.report` step."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from xkd.errors import UsageError  # noqa: E402
from xkd.paths import REPO  # noqa: E402

PAPER = REPO / "data" / "paper_results.yaml"


def find_metrics(paths: list[str]) -> list[dict]:
    files = []
    for p in map(Path, paths):
        files += sorted(p.rglob("metrics.json")) if p.is_dir() else [p]
    if not files:
        raise UsageError(f"no metrics.json under {', '.join(paths)}")
    out = []
    for f in files:
        m = json.loads(f.read_text())
        m["_file"] = str(f)
        out.append(m)
    return out


def paper_number(m: dict) -> tuple[float | None, str]:
    table = yaml.safe_load(PAPER.read_text())
    for row in table["results"]:
        if row["dataset"] == m["dataset"] and row["protocol"] == m["protocol"]:
            variant = m.get("variant") or "xkd"
            return row.get(variant), table["sources"][row["source"]]
    return None, ""


def label(m: dict) -> str:
    what = {
        "encoder": f"{m.get('variant') or 'xkd'} {m['role']}",
        "random-init": "random init (same arch)",
        "logmel-stats": "log-mel statistics",
        "pixel-stats": "pixel statistics",
        "shuffled-labels": f"{m.get('variant') or 'xkd'} {m['role']}, shuffled training labels",
    }[m["features"]]
    return f"{m['dataset']} {m['protocol']} - {what}"


def table(metrics: list[dict]) -> str:
    lines = [
        "| dataset | protocol | features | ours (val-selected) | paper-style (test-selected) | paper | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in metrics:
        paper, source = paper_number(m) if m["features"] == "encoder" else (None, "")
        unit = "mAP" if m["metric"] == "map" else "top-1"
        feats = label(m).split(" - ")[1] + (" (smoke test)" if m.get("smoke") else "")
        lines.append(
            f"| {m['dataset']} | {m['protocol']} | {feats} | {m['mean']:.1f} ± {m['std']:.1f} {unit} "
            f"({len(m['folds'])} folds) | {m['paper_style']['mean']:.1f} | "
            f"{'%.1f' % paper if paper is not None else '-'} | {source.split(':')[0] if source else '-'} |"
        )
    return "\n".join(lines)


def plot_scores(metrics: list[dict], png: Path) -> None:
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(metrics)), 4.5), constrained_layout=True)
    xs = range(len(metrics))
    bars = ax.bar(
        [x - 0.2 for x in xs],
        [m["mean"] for m in metrics],
        0.4,
        yerr=[m["std"] for m in metrics],
        label="ours (val-selected)",
        capsize=3,
        color="tab:blue",
    )
    ax.bar_label(bars, fmt="%.1f", padding=6, fontsize=8)
    papers = [paper_number(m)[0] if m["features"] == "encoder" else None for m in metrics]
    if any(p is not None for p in papers):  # datasets without a paper number (esc10, samples) get none
        ax.bar(
            [x + 0.2 for x, p in zip(xs, papers) if p is not None],
            [p for p in papers if p is not None],
            0.4,
            label="paper (ViT-B, K400, 800 epochs)",
            color="tab:gray",
        )
    ax.set_xticks(list(xs), [label(m).replace(" - ", "\n") for m in metrics], fontsize=8)
    ax.set_ylabel("score (%)")
    ax.legend()
    ax.set_title("Downstream scores")
    fig.savefig(png, dpi=110)
    plt.close(fig)


def plot_folds(metrics: list[dict], png: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for m in metrics:
        key = m["metric"]
        ax.plot([f["fold"] for f in m["folds"]], [f[key] for f in m["folds"]], marker="o", label=label(m))
    ax.set_xlabel("fold / split")
    ax.set_ylabel("score (%)")
    ax.legend(fontsize=7)
    ax.set_title("Per-fold scores")
    fig.savefig(png, dpi=110)
    plt.close(fig)


def render(metrics: list[dict], pretrain: Path | None) -> str:
    parts = [
        "# XKD reproduction report",
        "",
        "Scores are means over folds with hyper-parameters chosen on a validation carve of each training "
        "split (groups held out whole). *Paper-style* repeats the official code's choice on the test fold, "
        "for comparison only. The paper's numbers are ViT-B pretrained 800 epochs on Kinetics-400.",
        "",
        table(metrics),
        "",
        "![scores](scores.png)",
        "",
        "![folds](folds.png)",
        "",
    ]
    smoke = [m for m in metrics if m.get("smoke")]
    if smoke:
        parts += [f"Smoke tests (code path only, not benchmarks): {', '.join(label(m) for m in smoke)}.", ""]
    if pretrain is not None:
        run = json.loads((pretrain / "run.json").read_text()) if (pretrain / "run.json").exists() else {}
        cfg = yaml.safe_load((pretrain / "config.yaml").read_text()) if (pretrain / "config.yaml").exists() else {}
        model = cfg.get("model", {})
        parts += [
            "## Pretraining",
            "",
            f"Preset `{model.get('preset')}`, variant `{model.get('variant')}`, "
            f"{cfg.get('train', {}).get('max_steps') or model.get('epochs')} steps/epochs; MLflow run "
            f"`{run.get('mlflow_run_id')}`.",
            "",
            "![loss curves](loss_curves.png)",
            "",
        ]
    parts += ["## Runs", ""] + [f"- `{m['_file']}`: {label(m)}, {m['wall_s']} s" for m in metrics]
    return "\n".join(parts) + "\n"
