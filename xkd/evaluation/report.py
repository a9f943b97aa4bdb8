"""The results report's content: first a verdict per encoder evaluation (does it beat its controls?
xkd.evaluation.verdict), then every evaluation beside the closest paper number (data/paper_results.yaml),
labelled with what that number measured and how it differs from this run, as a Markdown table, and PNG plots.
Written by the `components.report` step."""

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
from xkd.evaluation.summary import fold_scores, spread  # noqa: E402
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


VARIANT_NAMES = {"xkd": "XKD", "mas": "XKD-MAS", "mats": "XKD-MATS"}


def paper_reference(m: dict, pretraining: str | None = None) -> dict | None:
    """The paper number closest to evaluation `m`: the paper's row for the same dataset and protocol, else the
    one data/paper_results.yaml names as `closest` for that dataset (None when neither exists). `text` says what
    the number measured and, when it is not this setting, how it differs (`pretraining`: how this run's encoder
    was pretrained, when known)."""
    table = yaml.safe_load(PAPER.read_text())
    variant = m.get("variant") or "xkd"
    close = (table.get("closest") or {}).get(m["dataset"])
    candidates = [(m["dataset"], None)] + ([(close["dataset"], close["why"])] if close else [])
    for dataset, why in candidates:
        row = next((r for r in table["results"] if (r["dataset"], r["protocol"]) == (dataset, m["protocol"])), None)
        if row is not None and row.get(variant) is not None:
            break
    else:
        return None
    differs = [f"other dataset ({why})"] if why else []
    if m.get("preset") != "base":
        differs.append(f"{m.get('preset') or 'an unnamed'} encoder, not ViT-B")
    if pretraining:
        differs.append(pretraining)
    name = (table.get("names") or {}).get(dataset, dataset)
    measured = f"{VARIANT_NAMES.get(variant, variant)} {table.get('setting', '')}".strip()
    source = table["sources"][row["source"]].split(":")[0]
    text = f"{name} {m['protocol']} {row[variant]:.1f}: {measured} ({source})"
    text += f"; not this setting: {'; '.join(differs)}" if differs else "; the same dataset, protocol and encoder"
    return {"value": float(row[variant]), "dataset": dataset, "name": name, "same": not differs, "text": text}


def paper_number(m: dict) -> tuple[float | None, str]:
    """(the closest paper number, its source) for `m`; (None, "") when the paper has nothing near it."""
    ref = paper_reference(m)
    return (ref["value"], ref["text"]) if ref else (None, "")


def label(m: dict) -> str:
    what = {
        "encoder": f"{m.get('variant') or 'xkd'} {m['role']}",
        "random-init": "random init (same arch)",
        "logmel-stats": "log-mel statistics",
        "pixel-stats": "pixel statistics",
        "shuffled-labels": f"{m.get('variant') or 'xkd'} {m['role']}, shuffled training labels",
    }[m["features"]]
    return f"{m['dataset']} {m['protocol']} - {what}"


def table(metrics: list[dict], pretraining: str | None = None) -> str:
    """One row per evaluation: ours (mean ± std over folds, ddof 1, n), paper-style, and the closest paper
    number labelled with what it measured (controls have none: the paper reports no controls)."""
    lines = [
        "| dataset | protocol | features | ours (val-selected) | paper-style (test-selected) | closest paper number |",
        "|---|---|---|---|---|---|",
    ]
    for m in metrics:
        unit = "mAP" if m["metric"] == "map" else "top-1"
        feats = label(m).split(" - ")[1] + (" (smoke test)" if m.get("smoke") else "")
        scores = fold_scores(m)
        if m["features"] != "encoder":
            paper = "- (a control: the paper reports none)"
        else:
            ref = paper_reference(m, pretraining)
            paper = ref["text"] if ref else "- (no paper number near this dataset)"
        lines.append(
            f"| {m['dataset']} | {m['protocol']} | {feats} | {np.mean(scores):.1f} ± {spread(scores):.1f} {unit} "
            f"(n = {len(scores)} folds) | {m['paper_style']['mean']:.1f} | {paper} |"
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
        ref = paper_reference(g.first) if kind == "encoder" else None
        if ref is not None:  # the same dataset's number, or the closest one labelled as another setting
            what = f"paper: {ref['name']} {g.protocol}" + ("" if ref["same"] else "\n(closest; not this setting)")
            slots.append({"kind": "paper", "group": g, "mean": ref["value"], "std": 0.0, "label": what})
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
                "paper": {"color": PAPER_COLOUR, "name": "paper (XKD ViT-B, K400, 800 epochs)"},
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
    fig.suptitle("Downstream scores (bars: mean ± sample std over folds, ddof 1; points: folds)")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return fig


def plot_folds(metrics: list[dict], png: Path):
    """One bar per fold for each evaluation (folds are categories: bars side by side, no line joins them),
    labelled with the fold number; encoder in colour, controls grey and hatched, chance dashed."""
    fig, panels = _axes(verdict.group(metrics), 4.0)
    for ax, (groups, title) in panels:
        shown: set = set()
        slots = [s for s in _slots(groups) if s["kind"] != "paper"]
        for x, s in enumerate(slots):
            g = s["group"]
            scores = g.fold_scores
            names = [f"{f['fold']}" for m in g.runs for f in m["folds"]]
            width = 0.8 / len(scores)
            xs = [x - 0.4 + width * (k + 0.5) for k in range(len(scores))]
            style = (
                {"color": ENCODER_COLOUR, "edgecolor": "black"}
                if s["kind"] == "encoder"
                else {"color": CONTROL_COLOUR, "hatch": CONTROL_HATCH, "edgecolor": "0.3"}
            )
            name = f"{s['kind']}: one bar per fold"
            bars = ax.bar(xs, scores, width * 0.9, linewidth=0.5, label=_legend_once(shown, name), **style)
            ax.bar_label(bars, labels=names, fontsize=6, padding=1)  # the fold number above its bar
        _chance_lines(ax, slots, shown)
        ax.set_xticks(range(len(slots)), [s["label"].replace(" - ", "\n") for s in slots], fontsize=7)
        ax.set_xlim(-0.6, len(slots) - 0.4)
        ax.set_ylabel("score (%)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Per-fold scores (bar labels: fold number)")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return fig


def pretraining_note(cfg: dict) -> str | None:
    """How this run's encoder was pretrained, where that differs from the paper's 800 epochs (None otherwise or
    unknown): the caveat beside every paper number."""
    steps = (cfg.get("train") or {}).get("max_steps")
    epochs = (cfg.get("model") or {}).get("epochs")
    if steps:
        return f"pretrained {steps} steps here"
    if epochs is not None and epochs != 800:
        return f"pretrained {epochs} epochs here"
    return None


def render(metrics: list[dict], pretrain: Path | None) -> str:
    cfg = {}
    if pretrain is not None and (pretrain / "config.yaml").exists():
        cfg = yaml.safe_load((pretrain / "config.yaml").read_text()) or {}
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
        "for comparison only. Each encoder score stands beside the closest number the paper reports, labelled "
        "with what that number measured; one from another dataset, encoder size or pretraining schedule says "
        "*not this setting* and why: a yardstick, not the number this run should reach.",
        "",
        table(metrics, pretraining_note(cfg)),
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
        model = cfg.get("model", {})
        parts += [
            "## Pretraining",
            "",
            f"Preset `{model.get('preset')}`, variant `{model.get('variant')}`, "
            f"{cfg.get('train', {}).get('max_steps') or model.get('epochs')} steps/epochs; MLflow run "
            f"`{run.get('mlflow_run_id')}`. The points on the total-loss panel are the held-out loss of each "
            "kept checkpoint that checkpoint selection scored; the star is the one it chose.",
            "",
            "![loss curves](loss_curves.png)",
            "",
        ]
    parts += ["## Runs", ""] + [f"- `{m['_file']}`: {label(m)}, {m['wall_s']} s" for m in metrics]
    return "\n".join(parts) + "\n"
