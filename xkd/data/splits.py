"""Official split / fold lists (data/splits/) and a validator for a user's copy of a dataset
(command line: `python -m components.splits`).

`load_split(dataset, split)` -> [SplitRow(path, label, subset)]; `path` is relative to the dataset root
as the official list names it; `subset` is `train`, `val` or `test`. Datasets and their `split` argument:

    ucf101          1..3  trainlist0N.txt / testlist0N.txt          9,537 / 3,783 for split 1
    hmdb51          1..3  <class>_test_split{N}.txt (1=train, 2=test, 0=unused)     3,570 / 1,530
    esc50           1..5  meta CSV: fold N is the test fold, the other four train   1,600 / 400
    kinetics_sound  1     the XKD repo's train/val lists (32 classes)              22,713 / 1,593
    kinetics400     1     user-provided CSVs (data/splits/kinetics400/{train,val}.csv)
    fsd50k          1     user-provided ground truth (data/splits/fsd50k/{dev,eval}.csv)

The validator never stops at a missing file: real copies (K400 above all) always lack some clips, so it
counts them per subset and lists them. Files are matched by the listed relative path first, then by file
stem, case-insensitively and ignoring the folder and extension: the official lists themselves disagree
with the archives on case (UCF101's testlists say `v_HandstandPushups_*`, the files are
`v_HandStandPushups_*`) and K400 mirrors differ in folder layout and container.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from xkd.errors import UsageError
from xkd.paths import SPLITS

SPLITS_DIR = SPLITS
N_SPLITS = {"ucf101": 3, "hmdb51": 3, "esc50": 5, "kinetics_sound": 1, "kinetics400": 1, "fsd50k": 1}
DATASETS = tuple(N_SPLITS)


@dataclass(frozen=True)
class SplitRow:
    path: str  # relative to the dataset root, as the official list names it (POSIX separators)
    label: str  # class name (FSD50K: the comma-separated label list)
    subset: str  # train | val | test


def _lines(path: Path) -> list[str]:
    # The UCF101 lists use CRLF; splitlines() + strip() reads both.
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _check(dataset: str, split: int | None) -> int:
    if dataset not in N_SPLITS:
        raise UsageError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    split = 1 if split is None else int(split)
    if not 1 <= split <= N_SPLITS[dataset]:
        raise UsageError(f"{dataset} has splits 1..{N_SPLITS[dataset]}, not {split}")
    return split


def split_files(dataset: str, split: int | None = None, splits_dir: Path = SPLITS_DIR) -> list[Path]:
    """The list files a split is read from (what lineage hashes)."""
    split = _check(dataset, split)
    d = Path(splits_dir) / dataset
    if dataset == "ucf101":
        return [d / "classInd.txt", d / f"trainlist0{split}.txt", d / f"testlist0{split}.txt"]
    if dataset == "hmdb51":
        return sorted((d / "testTrainMulti_7030_splits").glob(f"*_test_split{split}.txt"))
    if dataset == "esc50":
        return [d / "esc50.csv"]
    if dataset == "kinetics_sound":
        return [d / "train.txt", d / "val.txt"]
    if dataset == "kinetics400":
        return [d / "train.csv", d / "val.csv"]
    return [d / "dev.csv", d / "eval.csv"]


def _require(files: list[Path], dataset: str) -> None:
    missing = [str(f) for f in files if not f.is_file()]
    if missing or not files:
        how = {
            "kinetics400": "copy the Kinetics-400 train/validate CSVs there (see data/splits/README.md)",
            "fsd50k": "copy FSD50K.ground_truth/dev.csv and eval.csv there (see data/splits/README.md)",
        }
        raise UsageError(
            f"split list(s) missing for {dataset}: {', '.join(missing) or 'none found'}; "
            f"{how.get(dataset, 'restore data/splits from git')}"
        )


def load_split(dataset: str, split: int | None = None, splits_dir: Path = SPLITS_DIR) -> list[SplitRow]:
    """All rows of one split (train and test/val together), in list order."""
    split = _check(dataset, split)
    files = split_files(dataset, split, splits_dir)
    _require(files, dataset)
    return _LOADERS[dataset](files, split)


def _ucf101(files: list[Path], split: int) -> list[SplitRow]:
    class_ind, train, test = files
    rows = []
    for ln in _lines(train):
        path, _index = ln.split()
        rows.append(SplitRow(path, path.split("/")[0], "train"))
    for path in _lines(test):  # the testlists carry no label: the class is the folder
        rows.append(SplitRow(path, path.split("/")[0], "test"))
    classes = {ln.split()[1] for ln in _lines(class_ind)}
    unknown = {r.label for r in rows} - classes
    if unknown:
        raise UsageError(f"UCF101 list names classes missing from classInd.txt: {sorted(unknown)[:5]}")
    return rows


def _hmdb51(files: list[Path], split: int) -> list[SplitRow]:
    rows = []
    suffix = f"_test_split{split}.txt"
    for f in files:
        label = f.name[: -len(suffix)]
        for ln in _lines(f):
            name, tag = ln.split()
            if tag in ("1", "2"):  # 0 = not used in this split
                rows.append(SplitRow(f"{label}/{name}", label, "train" if tag == "1" else "test"))
    return rows


def _esc50(files: list[Path], split: int) -> list[SplitRow]:
    with open(files[0], newline="") as fh:
        return [
            SplitRow(f"audio/{r['filename']}", r["category"], "test" if int(r["fold"]) == split else "train")
            for r in csv.DictReader(fh)
        ]


def _kinetics_sound(files: list[Path], split: int) -> list[SplitRow]:
    rows = []
    for f, subset in zip(files, ("train", "val")):
        for path in json.loads(f.read_text()):  # the XKD repo stores each list as one JSON array
            rows.append(SplitRow(path, path.split("/")[0], subset))
    return rows


def _kinetics400(files: list[Path], split: int) -> list[SplitRow]:
    """Official Kinetics CSV columns: label,youtube_id,time_start,time_end,split[,is_cc]."""
    rows = []
    for f, subset in zip(files, ("train", "val")):
        with open(f, newline="") as fh:
            reader = csv.DictReader(fh)
            need = {"label", "youtube_id", "time_start", "time_end"}
            if not need <= set(reader.fieldnames or ()):
                raise UsageError(
                    f"{f}: expected the Kinetics CSV header label,youtube_id,time_start,time_end,"
                    f"split; got {reader.fieldnames}"
                )
            for r in reader:
                stem = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
                rows.append(SplitRow(f"{r['label']}/{stem}.mp4", r["label"], subset))
    return rows


def _fsd50k(files: list[Path], split: int) -> list[SplitRow]:
    """FSD50K.ground_truth: dev.csv fname,labels,mids,split (train|val); eval.csv fname,labels,mids."""
    rows = []
    for f, folder in zip(files, ("FSD50K.dev_audio", "FSD50K.eval_audio")):
        with open(f, newline="") as fh:
            for r in csv.DictReader(fh):
                rows.append(SplitRow(f"{folder}/{r['fname']}.wav", r["labels"], r.get("split") or "test"))
    return rows


_LOADERS = {
    "ucf101": _ucf101,
    "hmdb51": _hmdb51,
    "esc50": _esc50,
    "kinetics_sound": _kinetics_sound,
    "kinetics400": _kinetics400,
    "fsd50k": _fsd50k,
}


def counts(rows: list[SplitRow]) -> dict[str, int]:
    return dict(sorted(Counter(r.subset for r in rows).items()))


def _stem(path: str) -> str:
    return PurePosixPath(path).stem.lower()


def index_root(root: str | os.PathLike) -> tuple[set[str], dict[str, list[str]]]:
    """(every file's relative POSIX path, {lower-case stem: [relative paths]}) of a dataset copy."""
    root = Path(root)
    paths: set[str] = set()
    stems: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            paths.add(rel)
            stems.setdefault(_stem(rel), []).append(rel)
    return paths, stems


def validate(
    dataset: str,
    root: str | os.PathLike,
    split: int | None = None,
    splits_dir: Path = SPLITS_DIR,
    max_listed: int | None = None,
) -> dict:
    """Which listed files a copy under `root` has; never raises for missing files, only counts them."""
    if not Path(root).is_dir():
        raise UsageError(f"dataset root is not a folder: {root}")
    rows = load_split(dataset, split, splits_dir)
    paths, stems = index_root(root)
    found: Counter = Counter()
    missing: list[dict] = []
    matched: dict[str, str] = {}
    for r in rows:
        hit = r.path if r.path in paths else next(iter(stems.get(_stem(r.path), ())), None)
        if hit is None:
            missing.append({"path": r.path, "label": r.label, "subset": r.subset})
        else:
            found[r.subset] += 1
            matched[r.path] = hit
    listed = counts(rows)
    used = set(matched.values())
    return {
        "dataset": dataset,
        "split": _check(dataset, split),
        "root": str(root),
        "listed": sum(listed.values()),
        "found": sum(found.values()),
        "missing": len(missing),
        "by_subset": {s: {"listed": n, "found": found[s], "missing": n - found[s]} for s, n in listed.items()},
        "missing_files": missing if max_listed is None else missing[:max_listed],
        "unlisted_files": len(paths - used),
        "matched": matched,
    }


def summary_line(report: dict) -> str:
    parts = ", ".join(f"{s} {v['found']}/{v['listed']}" for s, v in report["by_subset"].items())
    return (
        f"{report['dataset']} split {report['split']} in {report['root']}: {report['found']} of "
        f"{report['listed']} listed files present ({parts}); {report['missing']} missing; "
        f"{report['unlisted_files']} files not in the lists"
    )
