"""The spread every report states and the small headline file DVC compares.

"±" everywhere (metrics.json, the report, the verdicts, results/eval/<name>.json) is the sample standard
deviation (ddof 1) over the n values it summarises, with n stated beside it. With one value there is no spread
to measure: it is 0.0 there, and the verdict says "no spread was measured".
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

DDOF = 1
SPREAD_TEXT = "sample standard deviation (ddof 1)"


def spread(values) -> float:
    """Sample standard deviation (ddof 1) of `values`; 0.0 for fewer than two (nothing measured)."""
    values = [float(v) for v in values]
    return float(np.std(values, ddof=DDOF)) if len(values) > 1 else 0.0


def fold_scores(metrics: dict) -> list[float]:
    """The per-fold scores of one metrics.json, in fold order."""
    return [float(f[metrics["metric"]]) for f in metrics["folds"]]


def headline(metrics: dict) -> dict:
    """The numbers `dvc metrics show` / `dvc exp show` print for one evaluation: {metric: {mean, std}, n_folds}
    (std recomputed from the folds with ddof 1, whatever the file says), rounded to what a reader compares."""
    scores = fold_scores(metrics)
    return {
        metrics["metric"]: {"mean": round(float(np.mean(scores)), 2), "std": round(spread(scores), 2)},
        "n_folds": len(scores),
    }


def write_headline(metrics: dict, path: str | os.PathLike) -> Path:
    """Write `headline(metrics)` to `path` atomically (a kill mid-write never leaves half a file in git)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(headline(metrics), indent=2) + "\n")
    os.replace(tmp, path)
    return path
