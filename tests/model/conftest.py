"""Shared fixtures for the model tests: the official unit numbers and small tiny-preset batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
# Numbers recorded from the official classes, vendored from the team's shared/fixtures (README there)
FIXTURES = REPO / "tests" / "fixtures" / "official_units"


@pytest.fixture(scope="session")
def official():
    """(tensors, json) recorded from the official classes."""
    from safetensors.torch import load_file

    path = FIXTURES / "standalone_losses.safetensors"
    if not path.exists():
        pytest.fail(f"official fixtures missing: {path}")
    return load_file(str(path)), json.loads((FIXTURES / "standalone_losses.json").read_text())


@pytest.fixture(scope="session")
def official_keys():
    """Rows of official_tiny_state_keys.tsv as dicts."""
    lines = (FIXTURES / "official_tiny_state_keys.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line.strip()]


def _make_batch(cfg, batch_size: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    b = batch_size
    return {
        "video": torch.randn(b, *cfg.video_input, generator=g),
        "video_local": [torch.randn(b, *cfg.video_local, generator=g) for _ in range(cfg.video_local_views)],
        "audio": torch.randn(b, *cfg.audio_input, generator=g),
        "audio_local": [torch.randn(b, *cfg.audio_local, generator=g) for _ in range(cfg.audio_local_views)],
    }


@pytest.fixture(scope="session")
def make_batch():
    """make_batch(cfg, batch_size=2, seed=0) -> random views in the config's geometry."""
    return _make_batch


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
