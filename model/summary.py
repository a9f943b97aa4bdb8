"""Parameter counts of a preset/variant, computed on the meta device (instant, no memory).

python -m model.summary --preset base --variant xkd
"""

from __future__ import annotations

import argparse
import json
import sys

from torch import nn

from .config import PRESETS, VARIANTS, ConfigError, preset
from .xkd import build


def _count(module: nn.Module, trainable_only: bool = False) -> int:
    # parameters() yields each shared tensor once, as the official counts do
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_counts(preset_name: str = "base", variant: str = "xkd", **overrides) -> dict[str, int]:
    model = build(preset(preset_name, variant, **overrides), device="meta")
    return {
        "video_encoder": _count(model.video_student.encoder),
        "audio_encoder": _count(model.audio_student.encoder),
        "video_decoder": _count(model.video_decoder),
        "audio_decoder": _count(model.audio_decoder),
        "head": _count(model.video_student.head),
        "head_trainable": _count(model.video_student.head, trainable_only=True),
        "encoder_blocks": _count(model.video_student.encoder.blocks),
        "total": _count(model),
        "trainable": _count(model, trainable_only=True),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model.summary", description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="base", choices=PRESETS)
    ap.add_argument("--variant", default="xkd", choices=VARIANTS)
    args = ap.parse_args(argv)
    try:
        counts = parameter_counts(args.preset, args.variant)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"preset": args.preset, "variant": args.variant, **counts}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
