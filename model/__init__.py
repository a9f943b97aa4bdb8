"""XKD in pure PyTorch + timm: encoders, MAE decoders, DINO heads, losses, variants, schedules, bundles.

Public interface (see each module's docstring):
    config:   preset(name, variant, **overrides) -> XKDConfig, from_dict, EncoderConfig, ConfigError
    model:    build(cfg, device=None) -> XKD;  XKD.forward(batch, epoch=0, generator=None) -> dict of losses
              XKD.update_teachers(momentum, audio_momentum=None), XKD.student_parameters_for_clipping()
    encoder:  Encoder (forward, forward_masked, forward_with_cls_attention, features), interpolate_pos_embed
    losses:   reconstruction_loss, dino_cross_entropy, dino_center_update, DINOCrossLoss, mmd, refine, ...
    optim:    param_groups(model, weight_decay, decay_pos_tokens), clip_grad_per_tensor_, build_optimizer
    schedules: cosine_schedule, lr_schedule, ema_schedule, ema_momentum, teacher_temperature(_schedule)
    bundles:  save_encoder, load_encoder, export_bundle, read_metadata, save_state, load_state
No file I/O outside `bundle` and `convert_official`; no tracking or pipeline imports.
"""

from .bundle import BundleError, export_bundle, load_encoder, load_state, read_metadata, save_encoder, save_state
from .config import ConfigError, EncoderConfig, XKDConfig, from_dict, preset
from .encoder import Encoder, interpolate_pos_embed
from .head import DINOHead
from .masking import random_masking
from .optim import build_optimizer, clip_grad_per_tensor_, param_groups
from .schedules import (
    cosine_schedule,
    ema_momentum,
    ema_schedule,
    lr_schedule,
    teacher_temperature,
    teacher_temperature_schedule,
)
from .xkd import XKD, build

__all__ = [
    "BundleError",
    "ConfigError",
    "DINOHead",
    "Encoder",
    "EncoderConfig",
    "XKD",
    "XKDConfig",
    "build",
    "build_optimizer",
    "clip_grad_per_tensor_",
    "cosine_schedule",
    "ema_momentum",
    "ema_schedule",
    "export_bundle",
    "from_dict",
    "interpolate_pos_embed",
    "load_encoder",
    "load_state",
    "lr_schedule",
    "param_groups",
    "preset",
    "random_masking",
    "read_metadata",
    "save_encoder",
    "save_state",
    "teacher_temperature",
    "teacher_temperature_schedule",
]
