"""Downstream datasets: which samples, labels, groups (for leak-free validation carves) and folds.

Every dataset is read from its caches under `--data DIR` (`DIR/clips`, `DIR/spectrograms`, built by the
same extract/spectrogram steps) and its official split lists in data/splits/. A sample's `clip_id` is
its path relative to the dataset root without the extension, which is how the cache names it.

Two learning-proof datasets take their samples, labels and folds from the cache itself (no split list):
- `fsdd` (audio): any folder of Free Spoken Digit Dataset files `{digit}_{speaker}_{index}.wav`, cached with
  `python -m components.cache_spectrograms --input FOLDER --output DIR/spectrograms --min-duration 0.1`
  (FSDD recordings last 0.16-2.2 s: the default 1 s minimum would reject most; the evaluation views pad
  them to the 4 s window). Label = digit; one fold per speaker present, in sorted name order (fold k
  tests speaker k, the probe trains on the others, and the validation carve holds out whole speakers).
- `digits-video` (video): the `{digit}_{image:04d}_{k}.mp4` renderings of components.build_avdigits,
  cached with `python -m components.extract_clips --input DIR/digits-video --output DIR/clips`. Label =
  digit, group = the digit image (all renderings k of one image on the same side); 5 folds: per digit,
  its images ordered by sha256 of "<digit>_<image>" are dealt round-robin into folds 1..5, so every
  fold holds about a fifth of each digit's images whatever the numbering of the images.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from xkd.data.cache_build import MANIFEST, read_manifest
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
    meta: dict = field(default_factory=dict)  # what the fold holds out (recorded in metrics.json)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    modality: str  # video | audio | audio+video
    folds: tuple[int, ...]  # () where the folds come from the data (`fold_numbers`)
    metric: str = "top1"  # top1 | map
    smoke: bool = False  # a smoke test only (tiny, not a benchmark)
    classes: int | None = None  # single-label class count: chance level = 100 / classes

    @property
    def chance(self) -> float | None:
        """Top-1 of a constant or random guess on balanced classes, in %; None for multi-label mAP."""
        return 100.0 / self.classes if self.classes and self.metric == "top1" else None


DIGITS_VIDEO_FOLDS = 5
CACHE_LABELLED = ("fsdd", "digits-video")  # samples, labels and folds read from the cache (file names)

DATASETS = {
    "esc10": DatasetInfo("esc10", "audio", (1, 2, 3, 4, 5), classes=10),
    "esc50": DatasetInfo("esc50", "audio", (1, 2, 3, 4, 5), classes=50),
    "ucf101": DatasetInfo("ucf101", "video", (1, 2, 3), classes=101),
    "hmdb51": DatasetInfo("hmdb51", "video", (1, 2, 3), classes=51),
    "kinetics400": DatasetInfo("kinetics400", "video", (1,), classes=400),
    "kinetics_sound": DatasetInfo("kinetics_sound", "audio+video", (1,), classes=32),
    "fsd50k": DatasetInfo("fsd50k", "audio", (1,), metric="map"),
    "samples-av": DatasetInfo("samples-av", "video", (1, 2), smoke=True, classes=8),
    "fsdd": DatasetInfo("fsdd", "audio", (), classes=10),  # one fold per speaker in the cache
    "digits-video": DatasetInfo("digits-video", "video", tuple(range(1, DIGITS_VIDEO_FOLDS + 1)), classes=10),
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


def fold_numbers(name: str, data: str | Path | None = None) -> list[int]:
    """Every fold of `name` ("all"): the fixed list, or for fsdd one per speaker found in the cache at `data`."""
    if name == "fsdd":
        return list(range(1, len(_fsdd_speakers(data)) + 1))
    return list(info(name).folds)


def load_fold(name: str, fold: int, data: str | Path | None = None) -> Fold:
    """Fold `fold` of `name`; fsdd and digits-video read their samples from the cache under `data`."""
    numbers = fold_numbers(name, data)
    if fold not in numbers:
        raise UsageError(f"{name} has folds/splits {numbers}, not {fold}")
    if name == "fsdd":
        return _fsdd(data, fold)
    if name == "digits-video":
        return _digits_video(data, fold)
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


FSDD_NAME = re.compile(r"(?P<digit>[0-9])_(?P<speaker>[^_/]+)_(?P<index>[0-9]+)")
DIGITS_VIDEO_NAME = re.compile(r"(?P<digit>[0-9])_(?P<image>[0-9]{4,})_(?P<k>[0-9]+)")


def _named_samples(name: str, data: str | Path | None, pattern: re.Pattern, layout: str) -> list[tuple[dict, str]]:
    """(match groups, clip id) of every sample in the dataset's cache; the file name (the clip id's last
    part, without an extension the cache kept to keep ids unique) must match `pattern`."""
    if data is None:
        raise UsageError(f"{name} reads its samples and folds from its cache: pass --data DIR")
    clips, specs = cache_dirs(name, data)
    cache = specs if specs is not None else clips
    parsed, bad = [], []
    for entry in read_manifest(cache):
        cid = entry["clip_id"]
        base = PurePosixPath(cid).name
        m = pattern.fullmatch(base) or pattern.fullmatch(PurePosixPath(base).stem)
        if m is None:
            bad.append(cid)
        else:
            parsed.append((m.groupdict(), cid))
    if bad:
        raise UsageError(
            f"{name}: {len(bad)} of {len(bad) + len(parsed)} samples in {cache} are not named {layout} "
            f"(e.g. {bad[0]!r}); build the cache from a folder of such files only"
        )
    if not parsed:
        raise UsageError(f"{name}: the cache {cache} holds no samples")
    return parsed


def _fsdd_samples(data) -> list[tuple[str, Sample]]:
    """(speaker, sample): label = digit, group = speaker (the validation carve holds out whole speakers)."""
    rows = _named_samples("fsdd", data, FSDD_NAME, "{digit}_{speaker}_{index}.wav (the FSDD layout)")
    return [(g["speaker"], Sample(cid, int(g["digit"]), g["speaker"])) for g, cid in rows]


def _fsdd_speakers(data) -> list[str]:
    speakers = sorted({spk for spk, _ in _fsdd_samples(data)})
    if len(speakers) < 3:  # one to test, and the training split needs one to fit and one to validate on
        raise UsageError(
            f"fsdd is evaluated leave-one-speaker-out and needs recordings of at least 3 speakers; "
            f"the cache under {data} has {len(speakers)} ({', '.join(speakers)})"
        )
    return speakers


def _fsdd(data, fold: int) -> Fold:
    """Leave-one-speaker-out: fold k tests the k-th speaker (sorted names) and trains on all the others."""
    speakers = _fsdd_speakers(data)
    held_out = speakers[fold - 1]
    samples = _fsdd_samples(data)
    return Fold(
        fold,
        [s for spk, s in samples if spk != held_out],
        [s for spk, s in samples if spk == held_out],
        {"held_out_speaker": held_out, "train_speakers": [s for s in speakers if s != held_out]},
    )


def digits_video_fold_of(samples: list[Sample]) -> dict[str, int]:
    """Fold (1..5) of every image group: per digit, images ordered by sha256 of the group, dealt round-robin."""
    by_digit: dict[int, set[str]] = {}
    for s in samples:
        by_digit.setdefault(int(s.label), set()).add(s.group)
    fold_of = {}
    for groups in by_digit.values():
        for rank, g in enumerate(sorted(groups, key=lambda g: hashlib.sha256(g.encode()).hexdigest())):
            fold_of[g] = 1 + rank % DIGITS_VIDEO_FOLDS
    return fold_of


def _digits_video(data, fold: int) -> Fold:
    rows = _named_samples("digits-video", data, DIGITS_VIDEO_NAME, "{digit}_{image:04d}_{k}.mp4 (build_avdigits)")
    samples = [Sample(cid, int(g["digit"]), f"{g['digit']}_{g['image']}") for g, cid in rows]
    fold_of = digits_video_fold_of(samples)
    test_images = sorted(g for g, f in fold_of.items() if f == fold)
    return Fold(
        fold,
        [s for s in samples if fold_of[s.group] != fold],
        [s for s in samples if fold_of[s.group] == fold],
        {
            "held_out": "digit images (<digit>_<image>); every rendering of an image on one side",
            "rule": "per digit, images ordered by sha256('<digit>_<image>') dealt round-robin into folds 1-5",
            "test_images": test_images,
        },
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
        where = (
            f"configs/eval/{name}.yaml gives the command"
            if name in CACHE_LABELLED
            else f"see data/splits/README.md for where the raw {name} files go"
        )
        raise UsageError(
            f"dataset {name}: no cache at {' and '.join(missing)}; build it with "
            f"components.extract_clips / components.cache_spectrograms ({where})"
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
