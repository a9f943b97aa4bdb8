"""Pretraining checkpoints: atomic directories, loadable with weights_only=True, newest-k retention.

    OUTPUT/run.json, config.yaml   the run's config hash and MLflow run id (`prepare_output`)
    OUTPUT/checkpoints/ckpt-00000040/
        model.safetensors      every model tensor (students, teachers, decoders, DINO centres)
        trainer.pt             optimiser, step, data position, RNG states, run id, config hash
                               (only tensors / numbers / strings: `torch.load(..., weights_only=True)`)
        bundle/                the encoder bundle of this checkpoint (Contracts: 4 safetensors + config.json)

A checkpoint is written into `.tmp-ckpt-*` and renamed into place, so a kill at any moment leaves either
the previous state or the complete new one. `XKD_FAULT=<point>:<step>` kills the process with SIGKILL at a
named point (`after_step`, `before_rename`, `before_export` of the final bundle) to test exactly that.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError

import model as xkd_model
from xkd.errors import UsageError

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


def prepare_output(output: Path, cfg, main: bool) -> dict:
    """The run state (`run.json`: config hash, MLflow run id) of `output`; a new run writes it with
    `config.yaml` (rank 0). Refuses a config (`PretrainConfig`) that differs from the one a previous run left."""
    run_file, digest = output / "run.json", cfg.resume_hash()
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if previous["config_hash"] != digest:
            raise UsageError(
                f"{output} holds a run with another config (hash {previous['config_hash']} != {digest}); "
                "use the same config to resume, or a new --output"
            )
        return previous
    state = {"config_hash": digest}
    if main:
        output.mkdir(parents=True, exist_ok=True)
        (output / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False))
        run_file.write_text(json.dumps(state, indent=2) + "\n")
    return state


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
    try:
        xkd_model.load_state(net, latest / "model.safetensors")
    except (SafetensorError, OSError) as err:  # not RuntimeError: a key mismatch is another config, not damage
        raise _corrupt(latest / "model.safetensors", err) from None
    trainer = read_trainer_state(latest)
    set_rng_state(trainer.pop("rng"))
    return trainer


def read_trainer_state(directory: Path) -> dict:
    """The trainer state of one checkpoint directory (for selection and inspection)."""
    path = Path(directory) / "trainer.pt"
    try:
        return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise _corrupt(path, err) from None


def _corrupt(path: Path, err: Exception) -> UsageError:
    # Renames make checkpoints atomic, so this is damage after the write (disk, copy) or a foreign file:
    # one line naming the file, instead of a torch/safetensors traceback.
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return UsageError(
        f"{path} is corrupt or not a checkpoint ({reason}); delete {path.parent} to resume from the one before"
    )
