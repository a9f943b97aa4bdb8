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
