"""What `components.evaluate --features` accepts: the bundle's encoder, or a control run through the same
code path (views, feature cache, folds, protocols), so the scores are comparable.

- `encoder`: the bundle's encoder of the chosen role;
- `random-init`: the same architecture, freshly initialised (seeded);
- `logmel-stats` (audio datasets only): per-band mean and std of the log-mel window, no network;
- `pixel-stats` (video datasets only): frame statistics on an 8x8 grid, no network
  (`xkd.evaluation.features.pixel_stats`);
- `shuffled-labels`: the encoder's features with the probe's TRAINING labels permuted (a fixed seed per
  fold), test labels untouched: the pipeline must land at chance. `--shuffle-labels` applies the same
  permutation to any of the feature sources above.
"""

from __future__ import annotations

from xkd.errors import UsageError

FEATURES = ("encoder", "random-init", "logmel-stats", "pixel-stats", "shuffled-labels")
HAND_MADE = {"logmel-stats": "audio", "pixel-stats": "video"}  # feature -> the one modality it exists for


def check(features: str, dataset_name: str, modality: str) -> None:
    """One clear line for a feature source the dataset cannot use."""
    if features not in FEATURES:
        raise UsageError(f"--features must be one of {', '.join(FEATURES)}, got {features!r}")
    need = HAND_MADE.get(features)
    if need is not None and modality != need:
        raise UsageError(f"{features} features exist for {need} datasets only; {dataset_name} is {modality}")


def needs_bundle(features: str) -> bool:
    return features not in HAND_MADE


def source_kind(features: str) -> str:
    """The FeatureSource kind: shuffled-labels probes the encoder's own features (same feature cache)."""
    return "encoder" if features == "shuffled-labels" else features


def shuffles_labels(features: str, shuffle_labels: bool) -> bool:
    return shuffle_labels or features == "shuffled-labels"
