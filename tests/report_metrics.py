"""metrics.json files as components.evaluate writes them, for the report tests."""

from __future__ import annotations

import json

import numpy as np

from xkd.evaluation.report import find_metrics


def metrics_json(dataset: str, features: str, scores: list[float], *, chance: float | None = 10.0, **extra) -> dict:
    """Mean and std (ddof 1) over the fold scores; `extra` adds or overrides keys (preset, seed, smoke, ...)."""
    folds = [
        {"fold": i + 1, "top1": s, "hparams": {"C": 1.0}, "selected_on": "val", "paper_style": {"top1": s}}
        for i, s in enumerate(scores)
    ]
    return {
        "dataset": dataset,
        "protocol": "svm",
        "role": "student",
        "features": features,
        "metric": "top1",
        "chance": chance,
        "variant": None if features.endswith("-stats") else "xkd",
        "folds": folds,
        "mean": float(np.mean(scores)),
        "std": float(np.std(scores, ddof=1)),
        "paper_style": {"mean": float(np.mean(scores)), "std": float(np.std(scores, ddof=1)), "rule": "test"},
        "smoke": False,
        "wall_s": 1.0,
        **extra,
    }


def write_metrics(root, runs: dict[str, dict]) -> list[dict]:
    """One <root>/<name>/metrics.json per run, read back as the report finds them."""
    for name, m in runs.items():
        (root / name).mkdir(parents=True)
        (root / name / "metrics.json").write_text(json.dumps(m))
    return find_metrics([str(root)])
