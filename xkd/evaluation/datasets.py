"""Downstream datasets: which samples, labels, groups (for leak-free validation carves) and folds.

Every dataset is read from its caches under `--data DIR` (`DIR/clips`, `DIR/spectrograms`, built by the
same extract/spectrogram steps) and its official split lists in data/splits/. A sample's `clip_id` is
its path relative to the dataset root without the extension, which is how the cache names it.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from xkd.data.cache_build import MANIFEST
from xkd.data.splits import load_split
from xkd.errors import UsageError
from xkd.paths import REPO


@dataclass(frozen=True)
class Sample:
    clip_id: str
    label: int | tuple[int, ...]  # a class index, or the label set (multi-label FSD50K)
    group: str  # source recording / video group: never split across train and val


@dataclass(frozen=True)
class Fold:
    fold: int
    train: list[Sample]
    test: list[Sample]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    modality: str  # video | audio | audio+video
    folds: tuple[int, ...]
    metric: str = "top1"  # top1 | map
    smoke: bool = False  # a smoke test only (tiny, not a benchmark)


DATASETS = {
    "esc10": DatasetInfo("esc10", "audio", (1, 2, 3, 4, 5)),
    "esc50": DatasetInfo("esc50", "audio", (1, 2, 3, 4, 5)),
    "ucf101": DatasetInfo("ucf101", "video", (1, 2, 3)),
    "hmdb51": DatasetInfo("hmdb51", "video", (1, 2, 3)),
    "kinetics400": DatasetInfo("kinetics400", "video", (1,)),
    "kinetics_sound": DatasetInfo("kinetics_sound", "audio+video", (1,)),
    "fsd50k": DatasetInfo("fsd50k", "audio", (1,), metric="map"),
    "samples-av": DatasetInfo("samples-av", "video", (1, 2), smoke=True),
}


def info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def _stem(path: str) -> str:
    return str(PurePosixPath(path).with_suffix(""))


def _index(labels: list[str]) -> dict[str, int]:
    return {name: i for i, name in enumerate(sorted(set(labels)))}


def _ucf_group(path: str) -> str:
    m = re.search(r"_g(\d+)_c\d+", path)
    return f"g{m.group(1)}" if m else path


def _hmdb_group(path: str, label: str) -> str:
    name = PurePosixPath(path).name
    return name.split(f"_{label}_")[0] if f"_{label}_" in name else name


def _from_split_rows(name: str, fold: int, group) -> Fold:
    rows = load_split(name, fold)
    classes = _index([r.label for r in rows])
    to_sample = lambda r: Sample(_stem(r.path), classes[r.label], group(r))  # noqa: E731
    return Fold(
        fold,
        [to_sample(r) for r in rows if r.subset == "train"],
        [to_sample(r) for r in rows if r.subset in ("test", "val")],
    )


def _esc(csv_path: Path, fold: int, stem_of) -> Fold:
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    classes = _index([r["category"] for r in rows])
    samples = [(int(r["fold"]), Sample(stem_of(r), classes[r["category"]], r["src_file"])) for r in rows]
    return Fold(fold, [s for f, s in samples if f != fold], [s for f, s in samples if f == fold])


def _samples_av(fold: int) -> Fold:
    """The labelled sample clips, two folds by a hash of the clip: a smoke test of the code path only."""
    with open(REPO / "data" / "samples" / "MANIFEST.tsv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["path"].startswith("av/") and r["label"]]
    classes = _index([r["label"] for r in rows])
    stems = [PurePosixPath(r["path"]).stem for r in rows]
    ids = [s if stems.count(s) == 1 else PurePosixPath(r["path"]).name for s, r in zip(stems, rows)]
    samples = [Sample(cid, classes[r["label"]], cid) for cid, r in zip(ids, rows)]
    side = lambda s: 1 + int(hashlib.sha256(s.clip_id.encode()).hexdigest(), 16) % 2  # noqa: E731
    return Fold(fold, [s for s in samples if side(s) != fold], [s for s in samples if side(s) == fold])


def parse_folds(folds: str | int | list[int] | None) -> list[int] | None:
    """Folds as params.yaml, the CLI and the KFP spec write them: "all" (None: every fold), "1,2", 3 or [1, 2]."""
    if folds is None or folds == "all":
        return None
    if isinstance(folds, int):
        return [folds]
    if isinstance(folds, str):
        try:
            return [int(f) for f in folds.split(",")]
        except ValueError:
            raise UsageError(f"folds must be 'all' or comma-separated integers such as '1,2', got {folds!r}") from None
    return [int(f) for f in folds]


def load_fold(name: str, fold: int) -> Fold:
    ds = info(name)
    if fold not in ds.folds:
        raise UsageError(f"{name} has folds/splits {list(ds.folds)}, not {fold}")
    if name == "esc10":
        return _esc(REPO / "data/samples/esc10/esc10_labels.csv", fold, lambda r: _stem(r["filename"]))
    if name == "esc50":
        return _esc(REPO / "data/splits/esc50/esc50.csv", fold, lambda r: _stem(r["filename"]))
    if name == "ucf101":
        return _from_split_rows(name, fold, lambda r: r.label + "/" + _ucf_group(r.path))
    if name == "hmdb51":
        return _from_split_rows(name, fold, lambda r: _hmdb_group(r.path, r.label))
    if name == "samples-av":
        return _samples_av(fold)
    if name in ("kinetics400", "kinetics_sound"):
        return _from_split_rows(
            name, None if name == "kinetics_sound" else fold, lambda r: PurePosixPath(r.path).stem[:11]
        )  # the YouTube id
    return _fsd50k(fold)


def _fsd50k(fold: int) -> Fold:
    rows = load_split("fsd50k", fold)
    vocab = _index([lab for r in rows for lab in r.label.split(",")])
    to_sample = lambda r: Sample(_stem(r.path), tuple(vocab[x] for x in r.label.split(",")), _stem(r.path))  # noqa
    return Fold(
        fold, [to_sample(r) for r in rows if r.subset != "test"], [to_sample(r) for r in rows if r.subset == "test"]
    )


def cache_dirs(name: str, data: str | Path) -> tuple[Path | None, Path | None]:
    """(clips, spectrograms) caches the dataset's modality needs under `data`; a clear error otherwise."""
    ds, root = info(name), Path(data)
    need_video, need_audio = "video" in ds.modality, "audio" in ds.modality
    clips, specs = root / "clips", root / "spectrograms"
    missing = [
        str(p / MANIFEST)
        for p, needed in ((clips, need_video), (specs, need_audio))
        if needed and not (p / MANIFEST).exists()
    ]
    if missing:
        raise UsageError(
            f"dataset {name}: no cache at {' and '.join(missing)}; build it with "
            f"components.extract_clips / components.cache_spectrograms (see data/splits/README.md "
            f"for where the raw {name} files go)"
        )
    return (clips if need_video else None), (specs if need_audio else None)


def validation_carve(train: list[Sample], fraction: float = 0.2, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices (fit, val) of `train`: whole groups go to val (by a hash of the group), so no source
    recording / video group is on both sides; the test fold is never looked at."""
    groups = sorted({s.group for s in train}, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    n_val = max(1, round(fraction * len(groups))) if len(groups) > 1 else 0
    val_groups = set(groups[:n_val])
    fit = [i for i, s in enumerate(train) if s.group not in val_groups]
    val = [i for i, s in enumerate(train) if s.group in val_groups]
    return fit, val
