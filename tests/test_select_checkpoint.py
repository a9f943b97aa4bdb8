"""Checkpoint selection scores the held-out clips with exactly the views pretraining used."""

from __future__ import annotations

import json

import pytest
import yaml

import model as xkd_model
from components import select_checkpoint
from xkd.data.pretrain_dataset import ViewConfig
from xkd.train import checkpoint, selection
from xkd.train.config import load_config


class _Captured(Exception):
    pass


def test_selection_uses_the_pretraining_view_config(tmp_path, micro_clips, monkeypatch):
    # A pretraining run whose views differ from every ViewConfig default that selection could fall back to.
    cfg = load_config("tiny", ["data.on_unreadable=skip", "data.blur_sigma=sampled"])
    pre = tmp_path / "pretrain"
    # a real checkpoint: selection verifies every checkpoint before it builds batches or scores
    checkpoint.save(pre, xkd_model.build(cfg.model), {"step": 1, "epoch": 0, "batch_in_epoch": 1}, keep=1)
    (pre / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False))
    (pre / "holdout.json").write_text(json.dumps({"train": [], "holdout": ["x"], "excluded": {}}))
    seen = {}

    def capture(clips, spectrograms, views, **kwargs):
        seen["views"] = views
        raise _Captured

    monkeypatch.setattr(selection, "PretrainDataset", capture)
    with pytest.raises(_Captured):
        select_checkpoint.run(str(pre), str(micro_clips), None, str(tmp_path / "select"), register=False)
    assert seen["views"] == ViewConfig.from_config(cfg)
    assert seen["views"].on_unreadable == "skip" and seen["views"].blur_sigma == "sampled"
    assert seen["views"].audio_local_views == cfg.model.audio_local_views
