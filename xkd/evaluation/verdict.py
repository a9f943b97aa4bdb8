"""Did it work? One verdict per encoder evaluation: does it beat the controls measured on the same dataset,
protocol and folds (xkd.evaluation.controls), by more than the spread of the scores.

metrics.json files of one evaluation spec (dataset, protocol, features, role, variant) that carry different
`seed` values are repeats of that spec: they are pooled, and the spread is then taken over the seeds' means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xkd.evaluation import datasets as eval_datasets
from xkd.evaluation.summary import fold_scores, spread

CONTROL_NAMES = {
    "random-init": "random init",
    "logmel-stats": "log-mel statistics",
    "pixel-stats": "pixel statistics",
    "shuffled-labels": "shuffled labels",
}
HAND_MADE_FOR = {"logmel-stats": "audio", "pixel-stats": "video"}  # a hand-made control exists for one modality

RULE = (
    "**Rule.** An encoder **learns** when its mean beats the random-init control (same architecture, same "
    "folds) by more than the larger of the two standard deviations; a margin inside either spread cannot be told "
    "from fold-to-fold (or seed-to-seed) variation. It **does not learn** otherwise, and the verdict is "
    "**no control** when no random-init evaluation exists for that dataset and protocol. Margins are the "
    "encoder's mean minus the control's, in points of the metric (top-1 % or mAP %); the other controls are "
    "reported beside it, they do not vote."
)
SPREAD = (
    "± = sample standard deviation (ddof 1) over the n folds given beside it, computed from the per-fold scores; "
    "where several seeds of one evaluation were run, the verdicts use the mean and the sample standard deviation "
    "(ddof 1) over the seeds' means. With n = 1 there is no spread: it is shown as 0.0."
)


@dataclass
class Group:
    """The metrics files of one evaluation spec, one per seed."""

    runs: list[dict]
    duplicates: int = 0  # further files with a seed already seen (not pooled: they would count twice)

    @property
    def first(self) -> dict:
        return self.runs[0]

    @property
    def dataset(self) -> str:
        return self.first["dataset"]

    @property
    def protocol(self) -> str:
        return self.first["protocol"]

    @property
    def features(self) -> str:
        return self.first["features"]

    @property
    def seeds(self) -> int:
        return len(self.runs)

    @property
    def folds(self) -> int:
        return min(len(m["folds"]) for m in self.runs)

    @property
    def mean(self) -> float:
        return self.first["mean"] if self.seeds == 1 else float(np.mean([m["mean"] for m in self.runs]))

    @property
    def std(self) -> float:
        """Over the folds (one seed) or the seeds' means, ddof 1: recomputed, so a file written when metrics.json
        held ddof 0 reads the same as a new one."""
        if self.seeds == 1:
            return spread(fold_scores(self.first))
        return spread([m["mean"] for m in self.runs])

    @property
    def fold_scores(self) -> list[float]:
        return [f[m["metric"]] for m in self.runs for f in m["folds"]]

    @property
    def smoke(self) -> bool:
        return bool(self.first.get("smoke"))

    @property
    def chance(self) -> float | None:
        return chance(self.first)

    def who(self) -> str:
        return f"{self.first.get('variant') or 'xkd'} {self.first['role']}"


def chance(m: dict) -> float | None:
    """metrics.json's `chance`; files written before that field existed fall back to the dataset registry."""
    if "chance" in m:
        return m["chance"]
    ds = eval_datasets.DATASETS.get(m["dataset"])
    return ds.chance if ds is not None else None


def spec_key(m: dict) -> tuple:
    return (m["dataset"], m["protocol"], m["features"], m["role"], m.get("variant") or "")


def group(metrics: list[dict]) -> list[Group]:
    """One Group per evaluation spec, in the order the specs first appear."""
    groups: dict[tuple, Group] = {}
    seen: dict[tuple, set] = {}
    for m in metrics:
        key = spec_key(m)
        if key not in groups:
            groups[key], seen[key] = Group([m]), {m.get("seed")}
        elif m.get("seed") in seen[key]:
            groups[key].duplicates += 1
        else:
            groups[key].runs.append(m)
            seen[key].add(m.get("seed"))
    return list(groups.values())


def _control(groups: list[Group], enc: Group, features: str) -> Group | None:
    """The control of `features` for `enc`: the same role if it was run, else any role."""
    same = [g for g in groups if (g.dataset, g.protocol, g.features) == (enc.dataset, enc.protocol, features)]
    return next((g for g in same if g.first["role"] == enc.first["role"]), same[0] if same else None)


def expected_controls(dataset: str) -> list[str]:
    """The controls that exist for the dataset's modality (pixel statistics are meaningless on audio)."""
    ds = eval_datasets.DATASETS.get(dataset)
    modality = ds.modality if ds is not None else "audio+video"
    return [f for f in CONTROL_NAMES if f not in HAND_MADE_FOR or HAND_MADE_FOR[f] in modality]


def verdict(enc: Group, groups: list[Group]) -> tuple[str, str]:
    """(verdict, the Markdown line saying it, with every margin and n)."""
    random = _control(groups, enc, "random-init")
    if random is None:
        word = "no control"
    else:
        word = "learns" if enc.mean - random.mean > max(enc.std, random.std) else "does not learn"
    parts = []
    for features in expected_controls(enc.dataset):
        ctrl = _control(groups, enc, features)
        name = CONTROL_NAMES[features]
        if ctrl is None:
            parts.append(f"{name}: not run" + (", so no verdict" if features == "random-init" else ""))
            continue
        text = f"{name} {ctrl.mean:.1f} ± {ctrl.std:.1f}: margin {enc.mean - ctrl.mean:+.1f} pts"
        if features == "random-init":
            text += f" (needs > {max(enc.std, ctrl.std):.1f})"
        parts.append(text)
    level = enc.chance
    if level is not None:
        parts.append(f"chance {level:.1f}: margin {enc.mean - level:+.1f} pts")
    n = f"n = {enc.folds} fold{'s' * (enc.folds != 1)} × {enc.seeds} seed{'s' * (enc.seeds != 1)}"
    notes = []
    if enc.folds == 1 and enc.seeds == 1:
        notes.append("one fold and one seed: no spread was measured")
    if enc.duplicates:
        notes.append(f"{enc.duplicates} more file(s) with a seed already counted were left out")
    if enc.smoke:
        notes.append("smoke test of the code path, not a benchmark")
    line = (
        f"- **{enc.dataset} {enc.protocol}** ({enc.who()}, {enc.mean:.1f} ± {enc.std:.1f}): **{word}**; "
        + "; ".join(parts)
        + f"; {n}"
        + (f" ({'; '.join(notes)})" if notes else "")
        + "."
    )
    return word, line


def verdict_lines(metrics: list[dict]) -> list[str]:
    groups = group(metrics)
    return [verdict(g, groups)[1] for g in groups if g.features == "encoder"]
