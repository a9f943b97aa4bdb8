"""Pretraining checkpoints: atomic directories, loadable with weights_only=True, newest-k retention.

    OUTPUT/run.json, config.yaml   the run's config hash and MLflow run id (`prepare_output`)
    OUTPUT/checkpoints/ckpt-00000040/
        model.safetensors      every model tensor (students, teachers, decoders, DINO centres)
        trainer.pt             optimiser, step, data position, RNG states, run id, config hash
                               (only tensors / numbers / strings: `torch.load(..., weights_only=True)`)
        bundle/                the encoder bundle of this checkpoint (Contracts: 4 safetensors + config.json)
        checksums.json         sha256 of model.safetensors and trainer.pt, checked before either is used

A checkpoint is written into `.tmp-ckpt-*` and renamed into place, so a kill at any moment leaves either
the previous state or the complete new one. `XKD_FAULT=<point>:<step>` kills the process with SIGKILL at a
named point (`after_step`, `before_rename`, `before_export` of the final bundle) to test exactly that.
"""

from __future__ import annotations

import hashlib
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
from safetensors import SafetensorError, safe_open

import model as xkd_model
from model.bundle import BundleError, verify_bundle
from xkd.errors import UsageError
from xkd.log import logger

log = logger(__name__)

PREFIX = "ckpt-"
CHECKSUMS = "checksums.json"
RESUME_KEYS = ("epoch", "batch_in_epoch")  # the data position a resume continues from (with "step")
NEW_CONFIG_CHOICES = ("refuse", "restart")  # what prepare_output does with a run of another config


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


def check_output(output: Path) -> None:
    """`--output` must be a directory or not exist yet (checked before anything is written)."""
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file; pass a directory (it is created if missing)")


def prepare_output(output: Path, cfg, main: bool, on_new_config: str = "refuse") -> dict:
    """The run state (`run.json`: config hash, MLflow run id) of `output`; a new run writes it with
    `config.yaml` (rank 0). A config (`PretrainConfig`) that differs from the one a previous run left once that
    run has a checkpoint is refused (`on_new_config="refuse"`), or that run is cleared and the new config
    starts over (`"restart"`: the dvc.yaml stage, where `dvc exp run -S ...` changes the config and DVC's cache
    keeps each finished run's output), the log saying what was cleared. Before its first checkpoint there is
    nothing to resume: a run that failed early (say a value that passed validation crashed the first step)
    must not lock `output` to its config, so another config starts over there, in a new MLflow run."""
    if on_new_config not in NEW_CONFIG_CHOICES:
        raise UsageError(f"on_new_config must be one of {NEW_CONFIG_CHOICES}, got {on_new_config!r}")
    check_output(output)
    run_file, digest = output / "run.json", cfg.resume_hash()
    if run_file.exists():
        try:
            previous = json.loads(run_file.read_text())
            recorded = previous["config_hash"]
        except (ValueError, KeyError, TypeError):
            previous, recorded = None, "unreadable"
        if recorded == digest:
            return previous
        if checkpoint_dirs(output) and on_new_config == "refuse":
            raise UsageError(
                f"{output} holds a run with another config (hash {recorded} != {digest}); "
                "use the same config to resume, or a new --output"
            )
        if checkpoint_dirs(output) and main:
            clear_run(output, recorded, digest)
    state = {"config_hash": digest}
    if main:
        output.mkdir(parents=True, exist_ok=True)
        (output / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False))
        run_file.write_text(json.dumps(state, indent=2) + "\n")
    return state


def clear_run(output: Path, recorded: str, digest: str) -> None:
    """Empty `output` of the run of config `recorded` so that config `digest` starts over, logging what goes:
    its newest step and whether it had finished (a finished run's output is in the DVC cache, a run killed
    before its end is not)."""
    dirs = checkpoint_dirs(output)
    step = dirs[-1].name.removeprefix(PREFIX).lstrip("0") or "0"
    if (output / "final").is_dir():
        what = "finished: under dvc its output stays in the DVC cache (`dvc exp show`, `dvc exp apply`)"
    else:
        what = "unfinished: stopped before its end, so no cache holds it"
    pending = output / "pending_metrics.jsonl"
    if pending.exists() and pending.stat().st_size:
        what += f"; {pending.name} held metrics the MLflow store never received"
    log.warning(
        f"{output} held a run of another config (hash {recorded}, newest checkpoint step {step}, "
        f"{len(dirs)} checkpoint(s), {what}); cleared it to start config {digest}: "
        + ", ".join(sorted(p.name for p in output.iterdir()))
    )
    for entry in output.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


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
    sums = {name: _sha256(tmp / name) for name in ("model.safetensors", "trainer.pt")}
    (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2) + "\n")
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
    verify_checksums(latest)
    trainer = read_trainer_state(latest)  # before the weights: a damaged checkpoint leaves `net` untouched
    missing = [k for k in RESUME_KEYS if k not in trainer]
    if missing:
        raise _corrupt(latest / "trainer.pt", ValueError(f"no {', '.join(missing)}: not a pretraining state"))
    try:
        xkd_model.load_state(net, latest / "model.safetensors")
    except (SafetensorError, OSError) as err:  # not RuntimeError: a key mismatch is another config, not damage
        raise _corrupt(latest / "model.safetensors", err) from None
    try:
        set_rng_state(trainer.pop("rng"))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        raise _corrupt(latest / "trainer.pt", ValueError(f"bad RNG state: {type(err).__name__} {err}")) from None
    return trainer


def read_trainer_state(directory: Path) -> dict:
    """The trainer state of one checkpoint directory (for selection and inspection), checked for the keys a
    resume reads: anything else (a foreign or damaged file) is one clear error, not a KeyError mid-resume."""
    path = Path(directory) / "trainer.pt"
    try:
        state = torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError, TypeError, ValueError) as err:
        # weights_only's unpickler answers foreign bytes with any of these
        raise _corrupt(path, err) from None
    problem = _trainer_problem(state, Path(directory).name)
    if problem:
        raise _corrupt(path, ValueError(problem))
    return state


def _trainer_problem(state, name: str) -> str | None:
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not a trainer state"
    for key in ("step", *RESUME_KEYS):
        value = state.get(key, 0 if key in RESUME_KEYS else None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{key} is {value!r}, not a count"
    if name.startswith(PREFIX) and name != f"{PREFIX}{state['step']:08d}":
        return f"it says step {state['step']}"
    if not isinstance(state.get("rng"), dict) or not torch.is_tensor(state["rng"].get("torch")):
        return "no RNG state"
    if "optimizer" in state and not isinstance(state["optimizer"], dict):
        return "the optimiser state is not a mapping"
    return None


def verify_checksums(directory: Path) -> None:
    """Compare model.safetensors and trainer.pt with the sha256 written with them (a flipped byte inside a
    tensor loads without complaint otherwise). Checkpoints written before checksums.json existed have none:
    they are loaded unchecked, as before."""
    directory = Path(directory)
    sums_file = directory / CHECKSUMS
    if not sums_file.exists():
        return
    try:
        sums = json.loads(sums_file.read_text())
        expected = {name: sums[name] for name in ("model.safetensors", "trainer.pt")}
    except (ValueError, KeyError, TypeError) as err:
        raise _corrupt(sums_file, err) from None
    for name, digest in expected.items():
        path = directory / name
        if not path.is_file():
            raise _corrupt(path, FileNotFoundError("missing"))
        if _sha256(path) != digest:
            raise _corrupt(path, ValueError("its sha256 differs from the one written with the checkpoint"))


def verify(directory: Path) -> None:
    """Everything checkpoint selection will read from one checkpoint, checked before any scoring starts:
    checksums, the safetensors header of model.safetensors, the trainer state and the encoder bundle."""
    directory = Path(directory)
    verify_checksums(directory)
    try:
        with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
            list(f.keys())
    except (SafetensorError, OSError) as err:
        raise _corrupt(directory / "model.safetensors", err) from None
    read_trainer_state(directory)
    try:
        verify_bundle(directory / "bundle")
    except BundleError as err:
        raise UsageError(f"{err}; delete {directory} or pretrain again") from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _corrupt(path: Path, err: Exception) -> UsageError:
    # Renames make checkpoints atomic, so this is damage after the write (disk, copy) or a foreign file:
    # one line naming the file, instead of a torch/safetensors traceback.
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return UsageError(
        f"{path} is corrupt or not a checkpoint ({reason}); delete {path.parent} to resume from the one before"
    )
