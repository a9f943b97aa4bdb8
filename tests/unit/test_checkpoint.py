"""xkd.train.checkpoint on a tiny model: atomic directories, weights_only loading, retention, clear errors."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from model import build, preset
from xkd.errors import UsageError
from xkd.train import checkpoint

BUNDLE_FILES = {f"{m}_{r}.safetensors" for m in ("video", "audio") for r in ("student", "teacher")} | {"config.json"}


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build(preset("tiny"))


def _names(output) -> list[str]:
    return [p.name for p in checkpoint.checkpoint_dirs(output)]


def test_save_load_round_trip_restores_weights_trainer_state_and_rngs(tmp_path):
    net = _net(0)
    trainer = {"step": 40, "optimizer": {"state": {0: {"exp_avg": torch.arange(3.0)}}}, "run_id": "abc", "epoch": 2}
    trainer["batch_in_epoch"] = 3  # a resume continues from this data position
    final = checkpoint.save(tmp_path, net, trainer, keep=3)
    assert final == tmp_path / "checkpoints" / "ckpt-00000040"
    assert {p.name for p in final.iterdir()} == {"model.safetensors", "trainer.pt", "bundle", "checksums.json"}
    assert {p.name for p in (final / "bundle").iterdir()} == BUNDLE_FILES
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # the temporary directory was renamed
    # the global RNG draws right after the save are what a resumed run must draw next
    expect = (torch.rand(4), random.random(), np.random.rand())

    other = _net(1)
    assert not torch.equal(other.video_student.encoder.pos_embed, net.video_student.encoder.pos_embed)
    random.seed(7), np.random.seed(7)
    got = checkpoint.load_latest(tmp_path, other)
    assert got == {**trainer, "optimizer": got["optimizer"]} and "rng" not in got
    assert torch.equal(got["optimizer"]["state"][0]["exp_avg"], torch.arange(3.0))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))
    assert torch.equal(torch.rand(4), expect[0]) and (random.random(), np.random.rand()) == expect[1:]
    assert checkpoint.load_latest(tmp_path / "nothing-here", other) is None  # a fresh run


def test_trainer_state_loads_with_weights_only_and_refuses_pickled_code(tmp_path):
    final = checkpoint.save(tmp_path, _net(0), {"step": 5, "config_hash": "h"}, keep=1)
    state = torch.load(final / "trainer.pt", weights_only=True)  # what a reader is allowed to do
    assert state["step"] == 5 and state["config_hash"] == "h" and torch.is_tensor(state["rng"]["torch"])
    assert checkpoint.read_trainer_state(final)["step"] == 5

    class Payload:  # anything that would run code when unpickled
        def __reduce__(self):
            return (print, ("unpickled!",))

    with open(final / "trainer.pt", "wb") as fh:
        pickle.dump({"step": 5, "x": Payload()}, fh)
    with pytest.raises(UsageError, match=r"trainer\.pt"):
        checkpoint.read_trainer_state(final)


def test_newest_k_are_kept_and_the_same_step_is_replaced_whole(tmp_path):
    net = _net(0)
    for step in (10, 20, 30, 40):
        checkpoint.save(tmp_path, net, {"step": step}, keep=2)
    assert _names(tmp_path) == ["ckpt-00000030", "ckpt-00000040"]
    stale = tmp_path / "checkpoints" / "ckpt-00000040" / "stale.txt"
    stale.write_text("from a run that was resumed")
    checkpoint.save(tmp_path, net, {"step": 40}, keep=2)  # after a resume: written again, not merged
    assert not stale.exists() and _names(tmp_path) == ["ckpt-00000030", "ckpt-00000040"]


def test_remove_partial_drops_a_half_written_checkpoint_and_nothing_else(tmp_path):
    net = _net(0)
    checkpoint.save(tmp_path, net, {"step": 10, "epoch": 0, "batch_in_epoch": 10}, keep=3)
    half = tmp_path / "checkpoints" / ".tmp-ckpt-00000020"  # a kill between the writes and the rename
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 100)
    assert _names(tmp_path) == ["ckpt-00000010"]  # never taken for a checkpoint ...
    assert checkpoint.load_latest(tmp_path, _net(1))["step"] == 10  # ... nor loaded
    checkpoint.remove_partial(tmp_path)
    assert not half.exists() and _names(tmp_path) == ["ckpt-00000010"]
    checkpoint.remove_partial(tmp_path / "fresh")  # no checkpoints directory yet: nothing to do


@pytest.mark.parametrize("name", ["model.safetensors", "trainer.pt"])
def test_a_corrupt_checkpoint_is_one_clear_error_naming_the_file(tmp_path, name):
    final = checkpoint.save(tmp_path, _net(0), {"step": 10}, keep=1)
    blob = (final / name).read_bytes()
    (final / name).write_bytes(blob[: len(blob) // 2])  # truncated, e.g. a full disk or a bad copy
    with pytest.raises(UsageError, match=rf"{final / name}.*corrupt") as err:
        checkpoint.load_latest(tmp_path, _net(1))
    assert "\n" not in str(err.value)
