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


def test_the_version_description_says_what_was_trained_how_it_was_chosen_and_how_to_load_it(tmp_path, micro_clips):
    """The registered version's description (its page in the MLflow UI): preset, data, steps, selection rule and
    the loading call, including how to embed one modality through the two-input signature."""
    cfg = load_config("tiny", ["train.max_steps=24"])
    pre = tmp_path / "pretrain"
    pre.mkdir()
    (pre / "holdout.json").write_text(json.dumps({"train": ["a", "b", "c"], "holdout": ["d"], "excluded": {}}))
    winner = {"role": "student", "checkpoint": "ckpt-00000016", "step": 16, "val_loss": 4.72521}
    text = select_checkpoint._description(cfg, pre, str(micro_clips), winner, held=1)
    assert text.startswith("XKD encoder, preset tiny (width 64, depth 2); the student of checkpoint ckpt-00000016")
    assert "(step 16 of 24)" in text and "3 clips, 1 held out for selection" in text
    assert f"Selection rule: {selection.RULE} (val_loss 4.7252)" in text
    assert 'mlflow.pyfunc.load_model("models:/xkd-encoder@champion")' in text
    assert "pass the other as an empty batch, shape [0, ...]" in text
