"""The data behind `dvc plots show`: small CSV files the report step writes and git commits (dvc.yaml `plots:`).

    loss.csv       step and the loss terms of every logged pretraining step (outputs/pretrain/metrics.jsonl)
    selection.csv  step, role, held-out loss of each checkpoint selection scored, and whether it was chosen
    folds.csv      one row per fold of every evaluation: evaluation (its outputs/eval/<name> folder), fold, score

CSV because DVC renders CSV/TSV/JSON/YAML (not JSON lines) and `dvc plots diff` compares them across
experiments; the columns are the ones the dvc.yaml plot definitions name.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from xkd.evaluation.summary import fold_scores

LOSS_COLUMNS = ("step", "total", "rec_v", "rec_a", "kd", "mmd_student")
SELECTION_COLUMNS = ("step", "role", "val_loss", "selected")
FOLD_COLUMNS = ("fold", "evaluation", "fold_number", "score")


def _write(path: Path, columns: tuple[str, ...], rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def evaluation_name(m: dict) -> str:
    """The evaluation's name: its outputs/eval/<name>/metrics.json folder (the params.yaml spec key)."""
    return Path(m["_file"]).parent.name if m.get("_file") else f"{m['dataset']}-{m['protocol']}-{m['features']}"


def write_plot_data(
    metrics: list[dict], out: Path, *, pretrain: Path | None = None, selection: dict | None = None
) -> list[Path]:
    """Write loss.csv, selection.csv and folds.csv under `out` (a file with only its header where the input is
    absent, so every plot dvc.yaml declares exists)."""
    out = Path(out)
    losses = []
    if pretrain is not None and (pretrain / "metrics.jsonl").exists():
        lines = (pretrain / "metrics.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
        losses = [{k: round(r[k], 5) if k != "step" else r[k] for k in LOSS_COLUMNS if k in r} for r in rows]
    winner = (selection or {}).get("winner") or {}
    chosen = (winner.get("checkpoint"), winner.get("role"))
    picks = [
        {**c, "val_loss": round(c["val_loss"], 5), "selected": int((c.get("checkpoint"), c["role"]) == chosen)}
        for c in (selection or {}).get("candidates", [])
    ]
    folds = []
    for m in metrics:
        name = evaluation_name(m)
        for f, score in zip(m["folds"], fold_scores(m)):
            row = {"fold": f"{name} fold {f['fold']}", "evaluation": name, "fold_number": f["fold"]}
            folds.append({**row, "score": round(score, 3)})
    return [
        _write(out / "loss.csv", LOSS_COLUMNS, losses),
        _write(out / "selection.csv", SELECTION_COLUMNS, picks),
        _write(out / "folds.csv", FOLD_COLUMNS, folds),
    ]
