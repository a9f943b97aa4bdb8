"""Model configuration: frozen dataclasses, presets chosen by name, one clear error for a bad key.

`preset(name, variant, **overrides)` is the single entry point. Every "official behaviour flag" of the
Contracts defaults to what the official code (pritamqu/XKD @ 806c75d) does; `model/DEVIATIONS.md` lists them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

PRESETS = ("tiny", "base")
VARIANTS = ("xkd", "mas", "mats")

# Allowed values of the string-valued flags; checked at construction so a typo fails loudly.
CHOICES = {
    "teacher_input": ("local", "global"),
    "teacher_mmd": ("logged", "drop"),
    "at2vs_student_temp": ("audio", "video"),
    "mmd_distance": ("expanded", "direct"),
    "amp_dtype": ("float16", "bfloat16"),
    "refine_mode": ("mean", "softmax", "none"),
}


class ConfigError(ValueError):
    """A bad preset, variant, key or value; the message names it."""


@dataclass(frozen=True)
class EncoderConfig:
    """One ViT encoder: enough to rebuild it (also what an encoder bundle's metadata stores)."""

    modality: str  # "video" | "audio"
    width: int
    depth: int
    heads: int
    patch: tuple[int, ...]  # video (t, h, w); audio (freq, time)
    input_size: tuple[int, ...]  # video (C, T, H, W); audio (C, F, T)
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-5

    def __post_init__(self):
        if self.modality not in ("video", "audio"):
            raise ConfigError(f"modality must be 'video' or 'audio', got {self.modality!r}")
        want = 3 if self.modality == "video" else 2
        if len(self.patch) != want or len(self.input_size) != want + 1:
            raise ConfigError(f"{self.modality} encoder needs a {want}-d patch and a {want + 1}-d input size")
        if self.width % self.heads:
            raise ConfigError(f"width {self.width} is not divisible by heads {self.heads}")

    def grid(self, size: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """Token grid for an input of spatial/temporal `size` (default: the native input size)."""
        size = tuple(size or self.input_size[1:])
        if any(s % p for s, p in zip(size, self.patch)):
            raise ConfigError(f"{self.modality} input {size} is not divisible by patch {self.patch}")
        return tuple(s // p for s, p in zip(size, self.patch))

    @property
    def num_patches(self) -> int:
        return math.prod(self.grid())

    @property
    def patch_dim(self) -> int:
        return self.input_size[0] * math.prod(self.patch)


@dataclass(frozen=True)
class XKDConfig:
    preset: str = "base"
    variant: str = "xkd"
    # encoders (ViT-B in the paper)
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    # MAE decoders: 384 wide, 4 blocks, 12 heads, no final norm
    decoder_width: int = 384
    decoder_depth: int = 4
    decoder_heads: int = 12
    # DINO head 2048-gelu-3-256-8192-norm3
    head_hidden: int = 2048
    head_bottleneck: int = 256
    head_out: int = 8192
    # input geometry: the paper's in every preset; a config may set a smaller one (xkd.data.geometry checks it)
    video_input: tuple[int, ...] = (3, 32, 112, 112)
    video_tubelet: tuple[int, ...] = (4, 16, 16)
    video_local: tuple[int, ...] = (3, 8, 96, 96)
    audio_input: tuple[int, ...] = (1, 80, 448)
    audio_patch: tuple[int, ...] = (4, 16)
    audio_local: tuple[int, ...] = (1, 80, 112)
    video_local_views: int = 1
    audio_local_views: int = 1
    # masked reconstruction
    video_mask_ratio: float = 0.85
    audio_mask_ratio: float = 0.80
    norm_pix_loss: bool = True
    # distillation
    video_student_temp: float = 0.1
    audio_student_temp: float = 0.1
    video_teacher_temp: float = 0.1
    audio_teacher_temp: float = 0.07
    video_warmup_teacher_temp: float = 0.1
    audio_warmup_teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 30
    center_momentum: tuple[float, float] = (0.9, 0.9)  # (vt->as, at->vs)
    mmd_gammas: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
    weight_da: float = 1.0
    weight_kd: float = 1.0
    weight_rec: float = 5.0
    # optimisation (used by schedules/param groups; the training step owns the loop)
    epochs: int = 800
    lr: float = 1e-4
    min_lr: float = 0.0
    warmup_epochs: int = 30
    weight_decay: float = 0.3
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float = 0.3
    ema_base: float = 0.997
    ema_final: float = 1.0
    # official behaviour flags (defaults = official code)
    teacher_input: str = "local"  # official feeds the teacher views[1] = first local view
    teacher_mmd: str = "logged"  # official adds a no-grad teacher MMD to L_da ("drop": leave it out)
    align_local_views: bool = False  # data side: local audio/video windows drawn independently
    at2vs_student_temp: str = "audio"  # official passes the audio student temp for at->vs
    mats_double_ema: bool = True  # official EMA loop updates MATS shared teacher blocks twice
    decay_pos_tokens: bool = True  # official decays pos-embeddings, CLS and mask tokens
    mmd_distance: str = "expanded"  # official ||x||^2+||y||^2-2xy (float32 round-off) vs "direct"
    amp_dtype: str = "float16"  # official CUDA AMP dtype; bf16 offered
    refine_mode: str = "mean"  # cm_attn_mode; "none" = plain mean pooling (refine ablation)

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {PRESETS}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown variant {self.variant!r}; choose one of {VARIANTS}")
        for key, allowed in CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"config key {key!r} must be one of {allowed}, got {getattr(self, key)!r}")
        if self.video_local_views < 1 or self.audio_local_views < 1:
            raise ConfigError("each modality needs at least one local view (the teacher reads the first)")

    @property
    def shared_student_blocks(self) -> bool:
        return self.variant in ("mas", "mats")

    @property
    def shared_teacher_blocks(self) -> bool:
        return self.variant == "mats"

    def encoder(self, modality: str) -> EncoderConfig:
        patch, size = (
            (self.video_tubelet, self.video_input) if modality == "video" else (self.audio_patch, self.audio_input)
        )
        return EncoderConfig(modality, self.width, self.depth, self.heads, tuple(patch), tuple(size), self.mlp_ratio)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Width/depth/heads only: every preset keeps the paper's input geometry (Contracts); a config may override it.
# `tiny` is the configuration of the official key-layout fixture (encoder 64x2x4, decoder 32x1,
# head 128->32->256), so the converter is tested on exactly that layout.
_PRESET_SIZES = {
    "base": {},
    "tiny": dict(
        width=64,
        depth=2,
        heads=4,
        decoder_width=32,
        decoder_depth=1,
        decoder_heads=4,
        head_hidden=128,
        head_bottleneck=32,
        head_out=256,
    ),
}
# MAS: 3 video local views and warmed-up teacher temperatures; MATS keeps XKD's temperatures (docs/xkd_spec.md §9).
_VARIANT_DEFAULTS = {
    "xkd": {},
    "mas": dict(
        video_local_views=3,
        video_warmup_teacher_temp=0.09,
        video_teacher_temp=0.11,
        audio_warmup_teacher_temp=0.04,
        audio_teacher_temp=0.06,
    ),
    "mats": dict(video_local_views=3),
}


def preset(name: str = "base", variant: str = "xkd", **overrides) -> XKDConfig:
    """Config for preset `name` ("tiny" | "base") and `variant`, with keyword overrides.

    Unknown override keys raise ConfigError naming the key; lists are turned into tuples.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {PRESETS}")
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    known = {f.name for f in dataclasses.fields(XKDConfig)}
    for key in overrides:
        if key not in known or key in ("preset", "variant"):
            raise ConfigError(
                f"unknown config key {key!r}; valid keys: {', '.join(sorted(known - {'preset', 'variant'}))}"
            )
    values = {
        **_PRESET_SIZES[name],
        **_VARIANT_DEFAULTS[variant],
        **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()},
    }
    return XKDConfig(preset=name, variant=variant, **values)


def from_dict(d: dict) -> XKDConfig:
    """Rebuild a config saved with `to_dict` (e.g. next to a checkpoint); same key checks as `preset`."""
    d = dict(d)
    return preset(d.pop("preset", "base"), d.pop("variant", "xkd"), **d)
