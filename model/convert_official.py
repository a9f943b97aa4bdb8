"""Convert official XKD checkpoints (pritamqu/XKD) into this package's formats.

    python -m model.convert_official --input FILE --output DIR [--preset P] [--variant V] [--role R]

Inputs (official files are pickles: read with `torch.load(weights_only=True)` only, never full unpickling):
  * a full training checkpoint `{"model": DDP state dict, "optimizer": ..., "epoch": ...}` ->
    DIR/model.safetensors (whole model, our key names) + the encoder bundle (4 files + config.json);
  * a released backbone-only state dict (`*vid_student.pth.tar`, `*aud_teacher.pth.tar`, ...) ->
    DIR/{video,audio}_{student,teacher}.safetensors.
Unknown keys, missing keys, shape mismatches and aliased keys that disagree are refused with one message.
The official layout (incl. the aliases `*_ae.encoder.*` = student backbone and `head.mlp.4` = `head.mlp.1`)
is recorded in shared/fixtures/official_units/official_tiny_state_keys.tsv.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import sys
from pathlib import Path

import torch

from .bundle import export_bundle, save_encoder, save_state
from .config import PRESETS, VARIANTS, preset
from .encoder import Encoder
from .xkd import XKD, build

_MOD = {"vid": "video", "aud": "audio"}
_MOD_INV = {v: k for k, v in _MOD.items()}
_PRESET_BY_WIDTH = {768: "base", 64: "tiny"}


class ConvertError(ValueError):
    """The input is not an official checkpoint this converter can map exactly; the message says why."""


# ---------------------------------------------------------------------------------------- key mapping
def backbone_key_to_ours(key: str) -> str:
    """Official VideoViT/AudioViT key -> our Encoder key (raises KeyError for anything else)."""
    if key in ("cls_token",):
        return key
    if key == "enc_pos_embed":
        return "pos_embed"
    for old, new in (
        ("cuboid_embed.proj.", "patch_embed.proj."),
        ("patch_embed.proj.", "patch_embed.proj."),
        ("encoder.blocks.", "blocks."),
        ("encoder_norm.", "norm."),
    ):
        if key.startswith(old):
            return new + key[len(old) :]
    raise KeyError(key)


def backbone_key_to_official(key: str, modality: str) -> str:
    if key == "pos_embed":
        return "enc_pos_embed"
    if key.startswith("patch_embed.proj."):
        return ("cuboid_embed.proj." if modality == "video" else "patch_embed.proj.") + key[len("patch_embed.proj.") :]
    if key.startswith("blocks."):
        return "encoder." + key
    if key.startswith("norm."):
        return "encoder_norm." + key[len("norm.") :]
    return key


def model_key_to_official(key: str) -> list[str]:
    """Our XKD key -> its official key(s); the student backbone also appears as `*_ae.encoder.*`."""
    m = re.match(r"(video|audio)_(student|teacher)\.(encoder|head)\.(.+)", key)
    if m:
        mod, role, part, rest = m.groups()
        short = _MOD_INV[mod]
        if part == "head":
            return [f"{short}_{role}.head.{rest}"]
        name = backbone_key_to_official(rest, mod)
        keys = [f"{short}_{role}.backbone.{name}"]
        return keys + [f"{short}_ae.encoder.{name}"] if role == "student" else keys
    m = re.match(r"(video|audio)_decoder\.(.+)", key)
    if m:
        mod, rest = m.groups()
        rest = {"pos_embed": "dec_pos_embed"}.get(rest, rest)
        return [f"{_MOD_INV[mod]}_ae.{'decoder.' + rest if rest.startswith('blocks.') else rest}"]
    if key in ("vt2as.center", "at2vs.center"):
        return [key.replace(".center", "_ce_loss.center")]
    raise KeyError(key)


def to_official_state_dict(model: XKD) -> dict[str, torch.Tensor]:
    """Our model's state in the official layout (aliases included): what an official checkpoint holds."""
    out = {}
    for k, v in model.state_dict().items():
        for ok in model_key_to_official(k):
            out[ok] = v
    return out


# ---------------------------------------------------------------------------------------- checks
def _check_layout(given: dict[str, torch.Tensor], expected: dict[str, tuple], what: str) -> None:
    unknown = sorted(set(given) - set(expected))
    missing = sorted(set(expected) - set(given))
    bad = [
        f"{k}: {tuple(given[k].shape)} != expected {expected[k]}"
        for k in sorted(set(given) & set(expected))
        if tuple(given[k].shape) != expected[k]
    ]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown key(s), e.g. {unknown[:3]}")
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
    if bad:
        problems.append(f"{len(bad)} shape mismatch(es), e.g. {bad[:3]}")
    if problems:
        raise ConvertError(f"not an official {what} layout: " + "; ".join(problems))


def _check_aliases(given: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]) -> None:
    """Every official key must equal what ended up in the model: catches aliases (shared LayerNorm,
    `*_ae.encoder`, MAS/MATS shared blocks) whose copies disagree."""
    diff = [k for k, v in given.items() if not torch.equal(v.to(loaded[k].dtype), loaded[k])]
    if diff:
        raise ConvertError(f"aliased keys hold different values (they must be one tensor), e.g. {diff[:3]}")


def load_official(path: str | Path) -> dict:
    """`torch.load(weights_only=True)` with errors turned into one clear message."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConvertError(f"{path}: no such file") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ConvertError(
            f"{path}: cannot be read as a weights-only torch checkpoint ({str(e).splitlines()[0]})"
        ) from None
    if not isinstance(obj, dict):
        raise ConvertError(f"{path}: expected a dict (state dict or checkpoint), got {type(obj).__name__}")
    return obj


def _detect_variant(sd: dict[str, torch.Tensor]) -> str:
    """Shared blocks are one storage in a torch.save'd state dict. Values alone cannot tell MAS from MATS:
    MAS's two teachers follow the same shared student with the same momentum, so they stay equal."""
    qkv = "encoder.blocks.0.attn.qkv.weight"

    def relation(a: str, b: str) -> str:
        ta, tb = sd.get(f"{a}.backbone.{qkv}"), sd.get(f"{b}.backbone.{qkv}")
        if ta is None or tb is None or ta.shape != tb.shape:
            return "different"
        if (
            ta.untyped_storage().data_ptr() == tb.untyped_storage().data_ptr()
            and ta.storage_offset() == tb.storage_offset()
        ):
            return "shared"
        return "equal" if torch.equal(ta, tb) else "different"

    students, teachers = relation("vid_student", "aud_student"), relation("vid_teacher", "aud_teacher")
    if students == "different":
        return "xkd"
    if teachers == "shared":
        return "mats"
    if teachers == "different" or students == "shared":  # students stored shared, teachers not: MAS
        return "mas"
    raise ConvertError("cannot tell MAS from MATS (blocks equal but not stored shared); pass --variant")


def _detect_preset(width: int, given: str | None) -> str:
    if given:
        return given
    if width not in _PRESET_BY_WIDTH:
        raise ConvertError(f"encoder width {width} matches no preset {PRESETS}; pass --preset")
    return _PRESET_BY_WIDTH[width]


# ---------------------------------------------------------------------------------------- conversion
def convert_full(sd: dict[str, torch.Tensor], preset_name: str | None = None, variant: str | None = None) -> XKD:
    """Official full-model state dict (DDP `module.` prefix allowed) -> our XKD model."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if "vid_student.backbone.cls_token" not in sd:
        raise ConvertError("not an official XKD model state dict (no vid_student.backbone.cls_token)")
    cfg = preset(
        _detect_preset(sd["vid_student.backbone.cls_token"].shape[-1], preset_name), variant or _detect_variant(sd)
    )
    meta_model = build(cfg, device="meta")
    expected, ours_of = {}, {}
    for k, v in meta_model.state_dict().items():
        for ok in model_key_to_official(k):
            expected[ok] = tuple(v.shape)
            ours_of.setdefault(k, ok)
    _check_layout(sd, expected, f"XKD ({cfg.preset}, {cfg.variant})")
    model = XKD(cfg, init=False)
    model.load_state_dict({k: sd[ok] for k, ok in ours_of.items()}, strict=True)
    _check_aliases(sd, to_official_state_dict(model))
    return model


def convert_backbone(sd: dict[str, torch.Tensor], preset_name: str | None = None) -> Encoder:
    """Released backbone-only state dict -> our Encoder (modality from the embedding's name)."""
    if "cls_token" not in sd or "enc_pos_embed" not in sd:
        raise ConvertError("not an official backbone state dict (needs cls_token and enc_pos_embed)")
    modality = "video" if any(k.startswith("cuboid_embed.") for k in sd) else "audio"
    cfg = preset(_detect_preset(sd["cls_token"].shape[-1], preset_name))
    enc = Encoder(cfg.encoder(modality), init=False)
    expected = {backbone_key_to_official(k, modality): tuple(v.shape) for k, v in enc.state_dict().items()}
    _check_layout(sd, expected, f"{modality} backbone ({cfg.preset})")
    enc.load_state_dict({backbone_key_to_ours(k): v for k, v in sd.items()}, strict=True)
    enc.preset = cfg.preset
    return enc


def _role_from_name(path: Path, role: str | None) -> str:
    if role:
        return role
    name = path.name.lower()
    for r in ("student", "teacher"):
        if r in name:
            return r
    raise ConvertError(f"cannot tell student from teacher by the file name {path.name!r}; pass --role")


def convert(
    input_path: str | Path,
    output_dir: str | Path,
    preset_name: str | None = None,
    variant: str | None = None,
    role: str | None = None,
) -> list[Path]:
    """Convert one official file; returns the files written."""
    input_path, output_dir = Path(input_path), Path(output_dir)
    obj = load_official(input_path)
    if "model" in obj and isinstance(obj["model"], dict):
        model = convert_full(obj["model"], preset_name, variant)
        output_dir.mkdir(parents=True, exist_ok=True)
        epoch = obj.get("epoch")
        meta = {
            "format": "xkd-model/1",
            "config": json.dumps(model.cfg.to_dict()),
            "source": input_path.name,
            "epoch": json.dumps(epoch if isinstance(epoch, int) else None),
        }
        files = [save_state(model, output_dir / "model.safetensors", metadata=meta)]
        return (
            files
            + list(export_bundle(model, output_dir, source=input_path.name).values())
            + [output_dir / "config.json"]
        )
    enc = convert_backbone(obj, preset_name)
    r = _role_from_name(input_path, role)
    out = output_dir / f"{enc.cfg.modality}_{r}.safetensors"
    return [save_encoder(enc, out, role=r, variant=variant or "xkd", preset=enc.preset, source=input_path.name)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model.convert_official", description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True, help="official checkpoint (.pth.tar)")
    ap.add_argument("--output", required=True, help="output directory")
    ap.add_argument("--preset", choices=PRESETS, help="default: inferred from the encoder width")
    ap.add_argument("--variant", choices=VARIANTS, help="default: inferred from shared blocks (full checkpoints)")
    ap.add_argument("--role", choices=("student", "teacher"), help="default: from the file name (backbones)")
    args = ap.parse_args(argv)
    try:
        files = convert(args.input, args.output, args.preset, args.variant, args.role)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
