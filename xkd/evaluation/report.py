"""The results report's content: first a verdict per encoder evaluation (does it beat its controls?
xkd.evaluation.verdict), then every evaluation next to the paper's number (data/paper_results.yaml) as a
Markdown table, and PNG plots. Written by the `components.report` step."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from xkd.errors import UsageError  # noqa: E402
from xkd.evaluation import verdict  # noqa: E402
from xkd.evaluation.verdict import Group  # noqa: E402
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


ENCODER_COLOUR = "tab:blue"
PAPER_COLOUR = "tab:orange"
CONTROL_COLOUR = "0.75"  # controls: grey and hatched, never mistaken for the method
CONTROL_HATCH = "//"


def _slots(groups: list[Group]) -> list[dict]:
    """The bars of one axis: each evaluation spec, with the paper's number right after an encoder's."""
    slots = []
    for g in groups:
        kind = "encoder" if g.features == "encoder" else "control"
        slots.append({"kind": kind, "group": g, "mean": g.mean, "std": g.std, "label": label(g.first)})
        paper = paper_number(g.first)[0] if kind == "encoder" else None
        if paper is not None:  # datasets without a paper number (esc10, samples) get none
            slots.append({"kind": "paper", "group": g, "mean": paper, "std": 0.0, "label": f"{g.dataset} paper"})
    return slots


def _legend_once(shown: set, name: str) -> str:
    """The label for an artist: `name` the first time on an axis (`shown`: names already there), hidden after."""
    if name in shown:
        return "_nolegend_"
    shown.add(name)
    return name


def _chance_lines(ax, slots: list[dict], shown: set) -> None:
    """A dashed line at each dataset's chance level (metrics.json `chance`), across that dataset's bars."""
    for dataset in dict.fromkeys(s["group"].dataset for s in slots):
        xs = [x for x, s in enumerate(slots) if s["group"].dataset == dataset]
        level = next((s["group"].chance for s in slots if s["group"].dataset == dataset), None)
        if level is not None:
            ax.plot(
                [min(xs) - 0.45, max(xs) + 0.45],
                [level, level],
                linestyle="--",
                color="black",
                linewidth=1,
                label=_legend_once(shown, "chance"),
            )


def _fold_points(ax, x: float, g: Group, colour: str, shown: set, name: str = "per-fold score") -> None:
    """Each fold's score as a point (folds are categories: no line joins them), spread a little in x."""
    scores = g.fold_scores
    offsets = np.linspace(-0.15, 0.15, len(scores)) if len(scores) > 1 else [0.0]
    ax.scatter(
        [x + o for o in offsets], scores, s=14, color=colour, edgecolors="black", linewidths=0.5, zorder=3,
        label=_legend_once(shown, name),
    )  # fmt: skip


def _axes(groups: list[Group], height: float):
    """The benchmark evaluations on the main axis; smoke tests (code path only) on their own, to the right."""
    order = {f: i for i, f in enumerate(("encoder", *verdict.CONTROL_NAMES))}  # method first, then controls
    groups = sorted(groups, key=lambda g: (g.dataset, g.protocol, order.get(g.features, len(order))))
    main = [g for g in groups if not g.smoke]
    smoke = [g for g in groups if g.smoke]
    panels = [(p, t) for p, t in ((main, "benchmarks"), (smoke, "smoke test\n(not a benchmark)")) if p]
    widths = [max(1, len(_slots(p))) for p, _ in panels]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(max(6, 2.0 * sum(widths)), height), width_ratios=widths, constrained_layout=True,
        squeeze=False,
    )  # fmt: skip
    return fig, list(zip(axes[0], panels))


def plot_scores(metrics: list[dict], png: Path):
    """Bars: the encoder in colour, controls grey and hatched, the paper's number; fold scores as points,
    each dataset's chance level dashed. Returns the figure (closed) so its content can be checked."""
    fig, panels = _axes(verdict.group(metrics), 4.8)
    for ax, (groups, title) in panels:
        shown: set = set()
        slots = _slots(groups)
        for x, s in enumerate(slots):
            style = {
                "encoder": {"color": ENCODER_COLOUR, "name": "encoder (val-selected)"},
                "control": {"color": CONTROL_COLOUR, "hatch": CONTROL_HATCH, "edgecolor": "0.3", "name": "control"},
                "paper": {"color": PAPER_COLOUR, "name": "paper (ViT-B, K400, 800 epochs)"},
            }[s["kind"]]
            name = style.pop("name")
            bars = ax.bar(
                x, s["mean"], 0.7, yerr=s["std"] or None, capsize=3, label=_legend_once(shown, name), **style
            )  # fmt: skip
            ax.bar_label(bars, fmt="%.1f", label_type="center", fontsize=8)  # clear of the error bar and fold points
            if s["kind"] != "paper":
                _fold_points(ax, x, s["group"], "white", shown)
        _chance_lines(ax, slots, shown)
        ax.set_xticks(range(len(slots)), [s["label"].replace(" - ", "\n") for s in slots], fontsize=7)
        ax.set_ylabel("score (%)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Downstream scores (bars: mean ± std over folds)")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return fig


def plot_folds(metrics: list[dict], png: Path):
    """Per-fold scores as points for each evaluation (encoder in colour, controls grey), chance dashed."""
    fig, panels = _axes(verdict.group(metrics), 4.0)
    for ax, (groups, title) in panels:
        shown: set = set()
        slots = [s for s in _slots(groups) if s["kind"] != "paper"]
        for x, s in enumerate(slots):
            colour = ENCODER_COLOUR if s["kind"] == "encoder" else CONTROL_COLOUR
            _fold_points(ax, x, s["group"], colour, shown, f"{s['kind']}, one point per fold")
        _chance_lines(ax, slots, shown)
        ax.set_xticks(range(len(slots)), [s["label"].replace(" - ", "\n") for s in slots], fontsize=7)
        ax.set_xlim(-0.6, len(slots) - 0.4)
        ax.set_ylabel("score (%)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Per-fold scores")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return fig


def render(metrics: list[dict], pretrain: Path | None) -> str:
    parts = [
        "# XKD reproduction report",
        "",
        "## Did it work?",
        "",
        *(verdict.verdict_lines(metrics) or ["No encoder evaluation among the metrics: nothing to judge."]),
        "",
        verdict.RULE,
        "",
        "## Scores",
        "",
        "Scores are means over folds with hyper-parameters chosen on a validation carve of each training "
        "split (groups held out whole). *Paper-style* repeats the official code's choice on the test fold, "
        "for comparison only. The paper's numbers are ViT-B pretrained 800 epochs on Kinetics-400.",
        "",
        table(metrics),
        "",
        verdict.SPREAD,
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
