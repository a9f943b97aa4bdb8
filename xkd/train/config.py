"""Pretraining configuration: a YAML preset chosen by name, dotted overrides, validation, a resume hash.

    model:       any model.XKDConfig key (preset, variant, widths, loss/optimiser/schedule values, flags)
    train:       TrainSettings (batch, accumulation, steps, precision, seed, ...)
    data:        DataSettings (views, held-out clips)
    checkpoint:  CheckpointSettings (cadence, how many to keep)

Unknown keys are refused with one message naming the key. `resume_hash` covers everything that changes
the numbers (not the checkpoint cadence, worker count or logging), so a resumed run is the same run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import model as xkd_model
from xkd.errors import UsageError
from xkd.paths import CONFIGS

CONFIG_DIR = CONFIGS / "pretrain"
FULL_SCHEDULE = 0  # train.max_steps / --max-steps value meaning model.epochs over the data


@dataclass(frozen=True)
class TrainSettings:
    batch_size: int = 32  # per process (official: 32 per GPU, 8 GPUs -> 256)
    accumulate: int = 1  # gradient accumulation steps per optimiser step
    max_steps: int = 0  # FULL_SCHEDULE (0): model.epochs of the data; N: the schedules span N steps
    seed: int = 99999  # the official seed
    precision: str = "auto"  # auto (CUDA bf16 / CPU fp32) | fp32 | bf16 | fp16 (+ GradScaler)
    lr_scaling: str = "none"  # none (official) | linear: lr * effective_batch / 256
    workers: int = 0  # DataLoader workers per process
    log_every: int = 1
    check_replicas_every: int = 1  # compare weights + DINO centres across ranks every N steps (0: never)


@dataclass(frozen=True)
class DataSettings:
    audio_source: str = "waveform"  # see xkd.data.pretrain_dataset.ViewConfig
    blur_sigma: str = "official"
    on_unreadable: str = "raise"
    holdout_fraction: float = 0.1  # clips held out from pretraining for checkpoint selection
    holdout_min: int = 1


@dataclass(frozen=True)
class CheckpointSettings:
    every_steps: int = 1000
    every_minutes: float = 30.0
    keep: int = 3  # latest k full checkpoints (each with its encoder bundle)


@dataclass(frozen=True)
class PretrainConfig:
    model: xkd_model.XKDConfig
    train: TrainSettings = field(default_factory=TrainSettings)
    data: DataSettings = field(default_factory=DataSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)

    def to_dict(self) -> dict:
        return {
            "model": self.model.to_dict(),
            "train": dataclasses.asdict(self.train),
            "data": dataclasses.asdict(self.data),
            "checkpoint": dataclasses.asdict(self.checkpoint),
        }

    def resume_hash(self) -> str:
        d = self.to_dict()
        d.pop("checkpoint")
        d["train"] = {k: v for k, v in d["train"].items() if k not in ("workers", "log_every", "check_replicas_every")}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`section.key=value` strings (values parsed as YAML) applied to the raw config dict."""
    raw = {k: dict(v or {}) for k, v in raw.items()}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UsageError(f"bad override {item!r}: expected section.key=value (e.g. train.batch_size=8)")
        dotted, value = item.split("=", 1)
        section, key = dotted.split(".", 1)
        raw.setdefault(section, {})[key] = yaml.safe_load(value)
    return raw


def _coerce(cls, values: dict, name: str) -> dict:
    """YAML reads `1e-4` (no dot) as a string: turn strings into the number a numeric field expects,
    and refuse anything else that is not a number there, naming the key."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    out = {}
    for key, value in values.items():
        default = defaults.get(key)
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        if numeric and isinstance(value, str):
            try:
                value = int(value) if isinstance(default, int) and value.strip().lstrip("-").isdigit() else float(value)
            except ValueError:
                raise UsageError(f"config key {name}.{key} must be a number, got {value!r}") from None
        out[key] = value
    return out


def _section(cls, values: dict, name: str):
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise UsageError(f"unknown config key {name}.{key}; valid: {', '.join(sorted(known))}")
    return cls(**_coerce(cls, values, name))


def build_config(raw: dict) -> PretrainConfig:
    for section in raw:
        if section not in ("model", "train", "data", "checkpoint"):
            raise UsageError(f"unknown config section {section!r}; valid: model, train, data, checkpoint")
    m = _coerce(xkd_model.XKDConfig, dict(raw.get("model") or {}), "model")
    try:
        model_cfg = xkd_model.preset(m.pop("preset", "base"), m.pop("variant", "xkd"), **m)
    except xkd_model.ConfigError as err:
        raise UsageError(f"model: {err}") from None
    cfg = PretrainConfig(
        model_cfg,
        _section(TrainSettings, raw.get("train") or {}, "train"),
        _section(DataSettings, raw.get("data") or {}, "data"),
        _section(CheckpointSettings, raw.get("checkpoint") or {}, "checkpoint"),
    )
    t = cfg.train
    if t.precision not in ("auto", "fp32", "bf16", "fp16") or t.lr_scaling not in ("none", "linear"):
        raise UsageError("train.precision must be auto|fp32|bf16|fp16 and train.lr_scaling none|linear")
    if t.max_steps is None or isinstance(t.max_steps, bool) or not isinstance(t.max_steps, int) or t.max_steps < 0:
        # one spelling for "the full schedule" in params.yaml, the CLI, the DAG and the configs: 0
        raise UsageError(
            f"train.max_steps must be a step count >= 0, got {t.max_steps!r}; {FULL_SCHEDULE} means the full schedule"
        )
    if t.batch_size < 1 or t.accumulate < 1:
        raise UsageError("train.batch_size and train.accumulate must be >= 1")
    if not 0 <= cfg.data.holdout_fraction < 1:
        raise UsageError("data.holdout_fraction must be in [0, 1)")
    return cfg


def load_config(path_or_name: str, overrides: list[str] = ()) -> PretrainConfig:
    """A YAML file, or a preset name under configs/pretrain/ (e.g. `tiny`, `xkd_base`)."""
    path = Path(path_or_name)
    if not path.exists():
        path = CONFIG_DIR / f"{path_or_name}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise UsageError(f"no config {path_or_name!r}: not a file and not one of {names}")
    raw = yaml.safe_load(path.read_text()) or {}
    return build_config(apply_overrides(raw, list(overrides)))
