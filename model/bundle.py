"""Encoder bundles (Contracts): `{video,audio}_{student,teacher}.safetensors` + `config.json` in a directory.

Each file's safetensors metadata carries everything needed to rebuild the encoder (modality, role,
variant, preset, width, depth, heads, patch/tubelet size, input size, ...), so `load_encoder(file)`
needs nothing else. The only file I/O of the package lives here and in `convert_official`.

Loading verifies what it reads: the tensor names and shapes against the encoder the metadata describes,
every value finite and of a plausible size, and the sha256 of the tensors (`tensors_sha256`, written at
export) against the tensors read, so a flipped byte or an edited weight is an error naming the file, not
wrong features. `verify_bundle(dir)` checks a whole bundle (config.json included) before a step starts work.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from .config import EncoderConfig, XKDConfig, from_dict
from .encoder import Encoder

FORMAT = "xkd-encoder/1"
ROLES = ("student", "teacher")
MODALITIES = ("video", "audio")
DIGEST_KEY = "tensors_sha256"
# Trained ViT weights are O(1); a value this large is damage (e.g. a corrupted float16 exponent), not learning.
MAX_ABS = 1e4


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
    meta = {**encoder_metadata(encoder, role, variant, preset, **extra), DIGEST_KEY: tensor_digest(tensors)}
    save_file(tensors, str(tmp), metadata=meta)
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


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors sorted by name (name, dtype, shape, bytes): what `tensors_sha256` records."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> Encoder:
    """Rebuild an encoder from a bundle file alone, verified (see the module docstring);
    `encoder.bundle_meta` holds the decoded metadata."""
    meta = read_metadata(path)
    try:
        enc = Encoder(encoder_config_from_metadata(meta), init=False)
    except (KeyError, TypeError, ValueError) as e:  # ConfigError is a ValueError
        raise BundleError(f"{path}: metadata does not describe an encoder ({type(e).__name__}: {e})") from None
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged data
        raise BundleError(f"{path}: unreadable tensors ({e})") from None
    _check_tensors(path, enc, tensors, meta)
    enc.load_state_dict(tensors, strict=True)
    enc.bundle_meta = meta
    return enc.to(device)


def _check_tensors(path, enc: Encoder, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    expected = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise BundleError(
            f"{path}: tensors do not match the encoder described by its metadata "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    for name in sorted(tensors):
        t = tensors[name]
        if tuple(t.shape) != expected[name]:
            raise BundleError(f"{path}: {name} has shape {tuple(t.shape)}, the metadata's encoder {expected[name]}")
        if not t.is_floating_point():
            raise BundleError(f"{path}: {name} holds {t.dtype}, not floating-point weights")
        if not torch.isfinite(t).all():
            raise BundleError(f"{path}: {name} holds non-finite values (NaN/inf): the file is damaged")
        if t.numel() and t.abs().max() > MAX_ABS:
            raise BundleError(f"{path}: {name} holds |values| up to {float(t.abs().max()):.3g}: the file is damaged")
    # Bundles written before the digest existed have no `tensors_sha256`: they load with the checks above only.
    if DIGEST_KEY in meta and tensor_digest(tensors) != meta[DIGEST_KEY]:
        raise BundleError(f"{path}: the tensors differ from the sha256 written at export: the file is damaged")


def verify_bundle(bundle_dir: str | Path, roles: tuple[str, ...] = ROLES) -> dict:
    """Check a bundle directory before a step starts work: config.json is a valid model config, and every
    encoder file of `roles` loads verified and matches it. Returns config.json's content."""
    bundle_dir = Path(bundle_dir)
    cfg_file = bundle_dir / "config.json"
    try:
        raw = json.loads(cfg_file.read_text())
        cfg = from_dict(raw)
    except FileNotFoundError:
        raise BundleError(f"{bundle_dir} is not an encoder bundle (no config.json)") from None
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as e:  # JSON, ConfigError, not a mapping
        raise BundleError(f"{cfg_file} is corrupt or not a model config ({' '.join(str(e).split())[:200]})") from None
    for modality in MODALITIES:
        want = cfg.encoder(modality)
        for role in roles:
            path = bundle_dir / f"{modality}_{role}.safetensors"
            if not path.is_file():
                raise BundleError(f"{bundle_dir} is not a complete encoder bundle (no {path.name})")
            enc = load_encoder(path)
            meta = enc.bundle_meta
            shape = ("width", "depth", "heads", "patch", "input_size", "mlp_ratio")  # ln_eps may differ (converted)
            if (
                any(getattr(enc.cfg, k) != getattr(want, k) for k in shape)
                or (meta.get("modality"), meta.get("role")) != (modality, role)
                or (meta.get("variant"), meta.get("preset")) != (cfg.variant, cfg.preset)
            ):
                raise BundleError(f"{path}: its metadata does not match {cfg_file}; the bundle is mixed up or damaged")
    return raw


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
