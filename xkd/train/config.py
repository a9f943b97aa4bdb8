"""Pretraining configuration: a YAML preset chosen by name, dotted overrides, validation, a resume hash.

    model:       any model.XKDConfig key (preset, variant, widths, loss/optimiser/schedule values, flags)
    train:       TrainSettings (batch, accumulation, steps, precision, seed, ...)
    data:        DataSettings (views, held-out clips)
    checkpoint:  CheckpointSettings (cadence, how many to keep)

Every section is validated with pydantic before any work starts: types (an integer key refuses 1.5, "abc"
and true), numeric ranges, the allowed values of every choice, and unknown keys. The first problem becomes one
`UsageError` line naming the key (exit 2), never a ZeroDivisionError or a deleted checkpoint later on.
`resume_hash` covers everything that changes the numbers (not the checkpoint cadence, worker count or
logging), so a resumed run is the same run.
"""

from __future__ import annotations

import hashlib
import json
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

import model as xkd_model
from xkd.data.cache_build import MANIFEST, read_manifest
from xkd.data.geometry import Geometry
from xkd.errors import UsageError
from xkd.paths import CONFIGS

CONFIG_DIR = CONFIGS / "pretrain"
FULL_SCHEDULE = 0  # train.max_steps / --max-steps value meaning model.epochs over the data
SECTIONS = ("model", "train", "data", "checkpoint")
MAX_STEPS_RULE = f"train.max_steps must be a step count >= 0; {FULL_SCHEDULE} means the full schedule"


def _yaml_number(value: Any) -> Any:
    """PyYAML reads `1e-4` (no dot) as a string: accept a numeric string for a float key; never a boolean
    (YAML `true` would otherwise pass as 1.0)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
    return value


Real = Annotated[float, BeforeValidator(_yaml_number)]  # finite (allow_inf_nan=False below)


def _step_count(value: Any) -> Any:
    # one spelling for "the full schedule" in params.yaml, the CLI, the DAG and the configs: 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{MAX_STEPS_RULE}, got {value!r}")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_default=True)


class TrainSettings(_Section):
    batch_size: StrictInt = Field(32, ge=1)  # per process (official: 32 per GPU, 8 GPUs -> 256)
    accumulate: StrictInt = Field(1, ge=1)  # gradient accumulation steps per optimiser step
    # FULL_SCHEDULE (0): model.epochs of the data; N: the schedules span N steps
    max_steps: Annotated[int, BeforeValidator(_step_count)] = FULL_SCHEDULE
    seed: StrictInt = Field(99999, ge=0, le=2**63 - 1)  # the official seed; torch/numpy take 0..2^63-1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: CUDA bf16 / CPU fp32; fp16 + GradScaler
    lr_scaling: Literal["none", "linear"] = "none"  # none (official) | linear: lr * effective_batch / 256
    workers: StrictInt = Field(0, ge=0)  # DataLoader workers per process
    log_every: StrictInt = Field(1, ge=1)  # a step modulus: 0 would divide by zero after the first step
    check_replicas_every: StrictInt = Field(1, ge=0)  # compare weights + DINO centres across ranks (0: never)


class DataSettings(_Section):
    audio_source: Literal["waveform", "spectrogram"] = "waveform"  # see xkd.data.pretrain_dataset.ViewConfig
    blur_sigma: Literal["official", "sampled"] = "official"
    on_unreadable: Literal["raise", "skip"] = "raise"
    holdout_fraction: Real = Field(0.1, ge=0, lt=1)  # clips held out from pretraining for checkpoint selection
    holdout_min: StrictInt = Field(1, ge=0)
    # RandomResizedCrop area ranges of the video views (official: global 0.2-1, local 0.08-0.4). A corpus whose
    # object fills little of the frame (avdigits) can keep it whole in more crops with larger ranges.
    global_scale: tuple[Real, Real] = (0.2, 1.0)
    local_scale: tuple[Real, Real] = (0.08, 0.4)

    @field_validator("global_scale", "local_scale")
    @classmethod
    def _area_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high <= 1:
            raise ValueError(f"an area range needs 0 < low <= high <= 1, got {list(value)}")
        return value


class CheckpointSettings(_Section):
    every_steps: StrictInt = Field(1000, ge=1)  # a step modulus, like train.log_every
    every_minutes: Real = Field(30.0, gt=0)
    # latest k full checkpoints (each with its encoder bundle); 0 would never prune and a negative k deleted
    # every checkpoint, so at least one is always kept
    keep: StrictInt = Field(3, ge=1)


# Ranges of the model keys (model.XKDConfig checks its choices itself, not its numbers). Temperatures may be
# 0: the non-finite-loss guard of the training step is what stops such a run, naming the term.
_POSITIVE = ("width", "depth", "heads", "decoder_width", "decoder_depth", "decoder_heads", "head_hidden")
_POSITIVE += ("head_bottleneck", "head_out", "video_local_views", "audio_local_views", "epochs")
_NON_NEGATIVE = ("warmup_epochs", "warmup_teacher_temp_epochs", "weight_da", "weight_kd", "weight_rec", "lr")
_NON_NEGATIVE += ("min_lr", "weight_decay", "clip_grad", "mlp_ratio")
_NON_NEGATIVE += tuple(f"{m}_{kind}temp" for m in ("video", "audio") for kind in ("student_", "teacher_"))
_NON_NEGATIVE += ("video_warmup_teacher_temp", "audio_warmup_teacher_temp")
_MODEL_RANGES: dict[str, dict] = {
    **{k: {"ge": 1} for k in _POSITIVE},
    **{k: {"ge": 0} for k in _NON_NEGATIVE},
    "video_mask_ratio": {"ge": 0, "lt": 1},
    "audio_mask_ratio": {"ge": 0, "lt": 1},
    "ema_base": {"ge": 0, "le": 1},
    "ema_final": {"ge": 0, "le": 1},
}
_ELEMENT_RANGES: dict[str, dict] = {  # tuple keys: a range for every element
    "center_momentum": {"ge": 0, "le": 1},
    "betas": {"ge": 0, "lt": 1},
    "mmd_gammas": {"gt": 0},
    **{k: {"ge": 1} for k in ("video_input", "video_tubelet", "video_local", "audio_input", "audio_patch")},
    "audio_local": {"ge": 1},
}


def _pydantic_type(hint, key: str, elements: bool = False):
    """The validated type of one model.XKDConfig field, from its annotation (so a new key is checked too)."""
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple[_pydantic_type(args[0], key, True), ...]
        return tuple[tuple(_pydantic_type(a, key, True) for a in args)]
    if key in xkd_model.config.CHOICES:
        base = Literal[xkd_model.config.CHOICES[key]]
    else:
        base = {int: StrictInt, float: Real, bool: StrictBool, str: StrictStr}[hint]
    limits = (_ELEMENT_RANGES if elements else _MODEL_RANGES).get(key)
    return Annotated[base, Field(**limits)] if limits else base


def _model_section() -> type[BaseModel]:
    hints = typing.get_type_hints(xkd_model.XKDConfig)
    spec = {f.name: (_pydantic_type(hints[f.name], f.name), f.default) for f in fields(xkd_model.XKDConfig)}
    spec["preset"] = (Literal[xkd_model.config.PRESETS], "base")
    spec["variant"] = (Literal[xkd_model.config.VARIANTS], "xkd")
    return pydantic.create_model("ModelSettings", __base__=_Section, **spec)


ModelSettings = _model_section()


@dataclass(frozen=True)
class PretrainConfig:
    model: xkd_model.XKDConfig
    train: TrainSettings = field(default_factory=TrainSettings)
    data: DataSettings = field(default_factory=DataSettings)
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)

    def to_dict(self) -> dict:
        return {
            "model": self.model.to_dict(),
            "train": self.train.model_dump(),
            "data": self.data.model_dump(),
            "checkpoint": self.checkpoint.model_dump(),
        }

    def resume_hash(self) -> str:
        d = self.to_dict()
        d.pop("checkpoint")
        d["train"] = {k: v for k, v in d["train"].items() if k not in ("workers", "log_every", "check_replicas_every")}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`section.key=value` strings (values parsed as YAML) applied to the raw config dict."""
    raw = {k: _mapping(v, k) for k, v in raw.items()}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise UsageError(f"bad override {item!r}: expected section.key=value (e.g. train.batch_size=8)")
        dotted, value = item.split("=", 1)
        section, key = dotted.split(".", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise UsageError(f"bad override {item!r}: the value is not YAML ({_first_line(err)})") from None
        raw.setdefault(section, {})[key] = parsed
    return raw


def _mapping(value, name: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"config section {name!r} must be a mapping of keys to values, got {value!r}")
    return dict(value)


def _first_line(err: Exception) -> str:
    return " ".join(str(err).split())[:200]


def _validate(cls: type[BaseModel], values: dict, name: str) -> BaseModel:
    try:
        return cls.model_validate(values)
    except pydantic.ValidationError as err:
        e = err.errors(include_url=False)[0]
        key = ".".join([name, *(str(p) for p in e["loc"])])
        error = (e.get("ctx") or {}).get("error")
        if isinstance(error, ValueError):  # our own validators' messages
            message = str(error) if str(error).startswith(key) else f"config key {key}: {error}"
        elif e["type"] == "extra_forbidden":
            # the model section keeps model.preset's wording ("model: unknown config key 'x'")
            shown = (
                f"{name}: unknown config key {key.split('.', 1)[1]!r}"
                if name == "model"
                else f"unknown config key {key}"
            )
            message = f"{shown}; valid: {', '.join(sorted(cls.model_fields))}"
        else:
            message = f"config key {key}: {e['msg'][0].lower()}{e['msg'][1:]}, got {e['input']!r}"
        more = err.error_count() - 1
        raise UsageError(message + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")) from None


def build_config(raw: dict) -> PretrainConfig:
    if not isinstance(raw, dict):
        raise UsageError(f"a pretraining config is a mapping of sections ({', '.join(SECTIONS)}), got {raw!r}")
    for section in raw:
        if section not in SECTIONS:
            raise UsageError(f"unknown config section {section!r}; valid: {', '.join(SECTIONS)}")
    sections = {s: _mapping(raw.get(s), s) for s in SECTIONS}
    m = _validate(ModelSettings, sections["model"], "model").model_dump(exclude_unset=True)
    try:
        model_cfg = xkd_model.preset(m.pop("preset", "base"), m.pop("variant", "xkd"), **m)
        for modality in ("video", "audio"):  # patch sizes that do not divide the input fail here, not in build()
            model_cfg.encoder(modality).grid()
        Geometry.from_model(model_cfg)  # input sizes the views cannot produce (audio and video spans disagree, ...)
    except xkd_model.ConfigError as err:
        raise UsageError(f"model: {err}") from None
    if model_cfg.warmup_epochs > model_cfg.epochs:
        raise UsageError(f"model.warmup_epochs ({model_cfg.warmup_epochs}) exceeds model.epochs ({model_cfg.epochs})")
    return PretrainConfig(
        model_cfg,
        _validate(TrainSettings, sections["train"], "train"),
        _validate(DataSettings, sections["data"], "data"),
        _validate(CheckpointSettings, sections["checkpoint"], "checkpoint"),
    )


def load_config(path_or_name: str, overrides: list[str] = ()) -> PretrainConfig:
    """A YAML file, or a preset name under configs/pretrain/ (e.g. `tiny`, `xkd_base`)."""
    path = Path(path_or_name)
    if not path.is_file():
        path = CONFIG_DIR / f"{path_or_name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise UsageError(f"no config {path_or_name!r}: not a file and not one of {names}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not valid YAML ({_first_line(err)})") from None
    return build_config(apply_overrides(_check_top(raw, path), list(overrides)))


def _check_top(raw, path: Path) -> dict:
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: a pretraining config is a mapping of sections ({', '.join(SECTIONS)})")
    return raw


def check_caches(cfg, clips: str, spectrograms: str | None) -> None:
    """--clips (and --spectrograms when data.audio_source=spectrogram) name caches that hold clips: checked before
    a step writes anything (a missing cache used to surface as a FileNotFoundError traceback)."""
    caches = [("--clips", clips, "components.extract_clips")]
    if cfg.data.audio_source == "spectrogram":
        if not spectrograms:
            raise UsageError("data.audio_source=spectrogram needs --spectrograms DIR (components.cache_spectrograms)")
        caches.append(("--spectrograms", spectrograms, "components.cache_spectrograms"))
    for flag, directory, step in caches:
        path = Path(directory)
        if not path.is_dir():
            raise UsageError(f"{flag} {path} is not a directory; build it with {step}")
        if not (path / MANIFEST).is_file():
            raise UsageError(f"{flag} {path} is not a cache (no {MANIFEST}); build it with {step}")
        try:
            entries = read_manifest(path)
        except (ValueError, UnicodeDecodeError) as err:
            raise UsageError(
                f"{flag} {path / MANIFEST} is corrupt ({_first_line(err)}); rebuild it with {step}"
            ) from None
        if not entries:
            raise UsageError(f"{flag} {path} holds no clips (an empty {MANIFEST}); nothing to pretrain on")
