"""Pretraining checkpoints: atomic directories, loadable with weights_only=True, newest-k retention.

    OUTPUT/checkpoints/ckpt-00000040/
        model.safetensors      every model tensor (students, teachers, decoders, DINO centres)
        trainer.pt             optimiser, step, data position, RNG states, run id, config hash
                               (only tensors / numbers / strings: `torch.load(..., weights_only=True)`)
        bundle/                the encoder bundle of this checkpoint (Contracts: 4 safetensors + config.json)

A checkpoint is written into `.tmp-ckpt-*` and renamed into place, so a kill at any moment leaves either
the previous state or the complete new one. `XKD_FAULT=<point>:<step>` kills the process with SIGKILL at a
named point (`after_step`, `before_rename`) to test exactly that.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import torch

import model as xkd_model

PREFIX = "ckpt-"


def fault_point(name: str, step: int) -> None:
    """Deterministic fault injection for the resume tests (no effect unless XKD_FAULT is set)."""
    spec = os.environ.get("XKD_FAULT", "")
    if spec and spec == f"{name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def rng_state() -> dict:
    """Global RNG states as tensors (the views and masks use their own seeded generators; these are kept
    so that any code relying on the global RNGs also resumes exactly)."""
    py_version, py_state, _ = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_version": py_version,
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(int(x) for x in state["python"]), None))
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(output: Path) -> list[Path]:
    root = Path(output) / "checkpoints"
    return sorted(p for p in root.glob(f"{PREFIX}*") if p.is_dir()) if root.exists() else []


def save(output: Path, net: torch.nn.Module, trainer: dict, keep: int) -> Path:
    """Write checkpoint `trainer["step"]` atomically, export its bundle, keep the newest `keep`."""
    root = Path(output) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    step = int(trainer["step"])
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    xkd_model.save_state(net, tmp / "model.safetensors", metadata={"step": str(step)})
    torch.save({**trainer, "rng": rng_state()}, tmp / "trainer.pt")
    xkd_model.export_bundle(net, tmp / "bundle", step=str(step))
    fault_point("before_rename", step)
    if final.exists():  # the same step written again after a resume: replace it whole
        shutil.rmtree(final)
    tmp.replace(final)
    for old in checkpoint_dirs(output)[:-keep]:
        shutil.rmtree(old)
    return final


def remove_partial(output: Path) -> None:
    """Remove the `.tmp-*` directory a write killed before its rename left behind."""
    root = Path(output) / "checkpoints"
    for tmp in root.glob(f".tmp-{PREFIX}*") if root.exists() else []:
        shutil.rmtree(tmp)


def load_latest(output: Path, net: torch.nn.Module) -> dict | None:
    """Load the newest complete checkpoint into `net`; return its trainer state (None if there is none)."""
    dirs = checkpoint_dirs(output)
    if not dirs:
        return None
    latest = dirs[-1]
    xkd_model.load_state(net, latest / "model.safetensors")
    trainer = torch.load(latest / "trainer.pt", weights_only=True)
    set_rng_state(trainer.pop("rng"))
    return trainer


def read_trainer_state(directory: Path) -> dict:
    """The trainer state of one checkpoint directory (for selection and inspection)."""
    return torch.load(Path(directory) / "trainer.pt", weights_only=True)
