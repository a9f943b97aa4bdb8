"""Paths and provenance tables of the embedded real sample media (data/samples)."""

from __future__ import annotations

import csv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
AV = SAMPLES / "av"
ESC = SAMPLES / "esc10"

MICRO_AV = ["R6llTwEh07w.mp4", "flipping_a_pancake.mkv", "big_buck_bunny_432_433.webm", "v_SoccerJuggling_g23_c01.avi"]


def sample_manifest() -> list[dict]:
    with open(SAMPLES / "MANIFEST.tsv", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def esc_labels() -> list[dict]:
    with open(ESC / "esc10_labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def micro_inputs(root: Path) -> dict[str, Path]:
    """4 real clips (one without audio) and 40 ESC-10 clips (2 per class in folds 1 and 2: the SVM's
    validation carve needs two per class), copied under `root`: the micro pipeline's raw data."""
    import shutil

    av, esc = root / "av", root / "esc10"
    av.mkdir(parents=True)
    esc.mkdir()
    for name in MICRO_AV:
        shutil.copy(AV / name, av / name)
    count: dict[tuple, int] = {}
    with open(ESC / "esc10_labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            key = (row["fold"], row["target"])
            if row["fold"] in ("1", "2") and count.get(key, 0) < 2:
                count[key] = count.get(key, 0) + 1
                shutil.copy(ESC / "audio" / row["filename"], esc / row["filename"])
    assert len(list(esc.iterdir())) == 40
    return {"samples-av": av, "esc10": esc}
