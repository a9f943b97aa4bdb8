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


def plot_loss_curves(metrics_jsonl: Path, png: Path, selection: dict | None = None) -> Path:
    """One panel per loss term plus the learning rate, against the optimiser step. With `selection` (the
    selection.json of components.select_checkpoint) the total-loss panel also shows the held-out loss of each
    checkpoint it scored, per role, and marks the chosen one: the curve and the choice on one axis."""
    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{metrics_jsonl} holds no metrics to plot")
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7), constrained_layout=True)
    for ax, (key, title) in zip(axes.flat, CURVES + (("lr", "learning rate"), ("ema_momentum", "EMA momentum"))):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], lw=1.2, label="training batches")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if selection:
        _selection_points(axes.flat[0], selection)
    fig.suptitle(f"XKD pretraining ({len(rows)} logged steps)")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Path(png)


SELECTION_MARKERS = {"student": "o", "teacher": "s"}


def _selection_points(ax, selection: dict) -> None:
    """Held-out loss per (checkpoint, role) as points; the winner as a star (it is one of those points)."""
    candidates = selection.get("candidates") or []
    for role in dict.fromkeys(c["role"] for c in candidates):
        mine = [c for c in candidates if c["role"] == role]
        ax.scatter(
            [c["step"] for c in mine],
            [c["val_loss"] for c in mine],
            marker=SELECTION_MARKERS.get(role, "^"),
            s=30,
            zorder=3,
            label=f"held-out loss, {role} (selection)",
        )
    winner = selection.get("winner")
    if winner:
        ax.scatter(
            [winner["step"]], [winner["val_loss"]], marker="*", s=220, color="gold", edgecolors="black", zorder=4,
            label=f"selected: {winner['role']} step {winner['step']}",
        )  # fmt: skip
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)  # below: never over a point
