"""PNG plots people would rather look at than read (matplotlib, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CURVES = (
    ("total", "total (L_da + L_kd + 5 L_rec) / 7"),
    ("rec_v", "L_rec video"),
    ("rec_a", "L_rec audio"),
    ("kd", "L_kd"),
    ("mmd_student", "MMD students"),
    ("mmd_teacher", "MMD teachers (logged only)"),
)


def plot_loss_curves(metrics_jsonl: Path, png: Path) -> Path:
    """One panel per loss term plus the learning rate, against the optimiser step."""
    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{metrics_jsonl} holds no metrics to plot")
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7), constrained_layout=True)
    for ax, (key, title) in zip(axes.flat, CURVES + (("lr", "learning rate"), ("ema_momentum", "EMA momentum"))):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], lw=1.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"XKD pretraining ({len(rows)} logged steps)")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Path(png)
