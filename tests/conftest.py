"""Shared fixtures: real sample media (data/samples) and small caches built from them once per session.

The *micro* set keeps the heavy tests fast: four real clips (three with audio, one without, four
containers) and 20 ESC-10 clips over two folds (one per class and fold).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sample_data import AV, ESC, MICRO_AV, esc_labels


def _link_dir(tmp: Path, files: list[Path]) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    for f in files:
        os.symlink(f, tmp / f.name)
    return tmp


@pytest.fixture(scope="session")
def micro_av_dir(tmp_path_factory) -> Path:
    return _link_dir(tmp_path_factory.mktemp("micro_av"), [AV / n for n in MICRO_AV])


@pytest.fixture(scope="session")
def micro_esc_dir(tmp_path_factory) -> Path:
    picked, seen = [], set()
    for row in esc_labels():
        key = (row["fold"], row["target"])
        if row["fold"] in ("1", "2") and key not in seen:
            seen.add(key)
            picked.append(ESC / "audio" / row["filename"])
    assert len(picked) == 20
    return _link_dir(tmp_path_factory.mktemp("micro_esc"), picked)


@pytest.fixture(scope="session")
def micro_clips(tmp_path_factory, micro_av_dir) -> Path:
    from components.extract_clips import run

    out = tmp_path_factory.mktemp("cache") / "clips"
    run(str(micro_av_dir), str(out), workers=1)
    return out


@pytest.fixture(scope="session")
def micro_spectrograms(tmp_path_factory, micro_clips) -> Path:
    from components.cache_spectrograms import run

    out = tmp_path_factory.mktemp("cache") / "spectrograms"
    run(str(out), clips=str(micro_clips), workers=1)
    return out


@pytest.fixture(scope="session")
def micro_esc_spectrograms(tmp_path_factory, micro_esc_dir) -> Path:
    from components.cache_spectrograms import run

    out = tmp_path_factory.mktemp("cache") / "esc_spectrograms"
    run(str(out), input=str(micro_esc_dir), workers=2)
    return out


@pytest.fixture(scope="session")
def samples_clips(tmp_path_factory) -> Path:
    """All 14 sample clips (the per-file checks of the issue run on every real sample)."""
    from components.extract_clips import run

    out = tmp_path_factory.mktemp("cache") / "samples_clips"
    run(str(AV), str(out), workers=2)
    return out


@pytest.fixture(scope="session")
def esc10_root(tmp_path_factory) -> Path:
    """All 400 ESC-10 clips as a dataset cache root (`ROOT/spectrograms`), for the 5-fold protocol."""
    from components.cache_spectrograms import run

    root = tmp_path_factory.mktemp("esc10")
    run(str(root / "spectrograms"), input=str(ESC / "audio"), workers=2)
    return root
