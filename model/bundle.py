"""Encoder bundles (Contracts): `{video,audio}_{student,teacher}.safetensors` + `config.json` in a directory.

Each file's safetensors metadata carries everything needed to rebuild the encoder (modality, role,
variant, preset, width, depth, heads, patch/tubelet size, input size, ...), so `load_encoder(file)`
needs nothing else. The only file I/O of the package lives here and in `convert_official`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from .config import EncoderConfig, XKDConfig
from .encoder import Encoder

FORMAT = "xkd-encoder/1"
ROLES = ("student", "teacher")


class BundleError(ValueError):
    """A file that is not a usable encoder bundle; the message says why."""


def encoder_metadata(encoder: Encoder, role: str, variant: str, preset: str, **extra) -> dict[str, str]:
    """Metadata strings for one encoder file (safetensors metadata must be str -> str)."""
    if role not in ROLES:
        raise BundleError(f"role must be one of {ROLES}, got {role!r}")
    c = encoder.cfg
    meta = {
        "format": FORMAT,
        "modality": c.modality,
        "role": role,
        "variant": variant,
        "preset": preset,
        "width": c.width,
        "depth": c.depth,
        "heads": c.heads,
        "mlp_ratio": c.mlp_ratio,
        "patch_size": list(c.patch),
        "input_size": list(c.input_size),
        "ln_eps": c.ln_eps,
    }
    meta.update(extra)
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def save_encoder(
    encoder: Encoder, path: str | Path, *, role: str, variant: str = "xkd", preset: str = "base", **extra
) -> Path:
    """Write one encoder (its own tensors, contiguous copies, so shared MAS blocks are fine) + metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in encoder.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=encoder_metadata(encoder, role, variant, preset, **extra))
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def read_metadata(path: str | Path) -> dict:
    """Decoded metadata of an encoder file (JSON values parsed back)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for non-safetensors input
        raise BundleError(f"{path}: not a safetensors file ({e})") from e
    if raw.get("format") != FORMAT:
        raise BundleError(f"{path}: not an XKD encoder bundle file (metadata format={raw.get('format')!r})")
    out = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def encoder_config_from_metadata(meta: dict) -> EncoderConfig:
    return EncoderConfig(
        meta["modality"],
        int(meta["width"]),
        int(meta["depth"]),
        int(meta["heads"]),
        tuple(meta["patch_size"]),
        tuple(meta["input_size"]),
        float(meta["mlp_ratio"]),
        float(meta.get("ln_eps", 1e-5)),
    )


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> Encoder:
    """Rebuild an encoder from a bundle file alone; `encoder.bundle_meta` holds the decoded metadata."""
    meta = read_metadata(path)
    enc = Encoder(encoder_config_from_metadata(meta), init=False)
    missing, unexpected = load_model(enc, str(path), strict=False, device=str(device))
    if missing or unexpected:
        raise BundleError(
            f"{path}: tensors do not match the encoder described by its metadata "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    enc.bundle_meta = meta
    return enc.to(device)


def export_bundle(model: nn.Module, out_dir: str | Path, **extra) -> dict[str, Path]:
    """Write the four encoder files of an XKD model and `config.json` (the resolved model config)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg: XKDConfig = model.cfg
    files = {}
    for modality in ("video", "audio"):
        for role in ROLES:
            enc = getattr(model, f"{modality}_{role}").encoder
            files[f"{modality}_{role}"] = save_encoder(
                enc,
                out_dir / f"{modality}_{role}.safetensors",
                role=role,
                variant=cfg.variant,
                preset=cfg.preset,
                **extra,
            )
    (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return files


def save_state(module: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Whole-module state as safetensors. Shared tensors (the head's aliased LayerNorm, MAS/MATS blocks)
    are stored once -- `save_file` refuses aliases, `save_model` de-duplicates them."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_model(module, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def load_state(module: nn.Module, path: str | Path, device: str = "cpu") -> nn.Module:
    """Inverse of `save_state` (strict: any missing or unexpected tensor is an error)."""
    load_model(module, str(path), strict=True, device=device)
    return module
