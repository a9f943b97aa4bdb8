"""Where the project's own files are: the one definition of the repository root."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SPLITS = REPO / "data" / "splits"
