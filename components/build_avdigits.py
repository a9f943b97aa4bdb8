"""Build AV-Digits: real mp4 clips of a moving handwritten digit that brightens while the digit is spoken.

    python -m components.build_avdigits --fsdd data/fsdd --output DIR --seed S [--clips 1000]
        [--pairing matched|mismatched] [--utterances 2] [--video-clips-per-image 2] [--video-images N]
        [--digits 0,1,...,9] [--workers W] [--background noisy|clean] [--digit-px 44,64]

DIR/pretrain/clip_NNNNN.mp4 (h264 + aac, 128x128, 25 fps, 4.5 s; no label in names or tags) from FSDD training
recordings and the first half of scikit-learn's digit images; DIR/pretrain_labels.csv holds their ground truth
(analysis only). DIR/digits-video/{digit}_{image:04d}_{k}.mp4 renders the other half of the images, video only,
for probing. Same args and seed -> byte-identical files; rerunning into a complete build is a no-op.
Corpus card: data/avdigits_README.md. Library: xkd.data.avdigits.
"""

from __future__ import annotations

import argparse
import os
import sys

from xkd.data.avdigits import DIGIT_PX, MAX_UTTERANCES, SIZE, build
from xkd.data.media import require_ffmpeg
from xkd.errors import UsageError, cli, step_parser
from xkd.log import logger

log = logger(__name__)

MAX_CLIPS = 100_000  # ~10 GB at ~100 kB a clip; past it a typo (--clips 1e7) would fill the disk
MAX_CLIPS_PER_IMAGE = 50


def _digits(text: str) -> list[int]:
    try:
        digits = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageError(f"--digits {text!r}: expected comma-separated digits 0-9, e.g. 0,1,2") from None
    if not digits or not all(0 <= d <= 9 for d in digits):
        raise UsageError(f"--digits {text!r}: expected comma-separated digits 0-9, e.g. 0,1,2")
    return digits


def _digit_px(text: str) -> tuple[int, int]:
    """`--digit-px LO,HI`: the digit's side drifts within [LO, HI] px; the path needs 8 px of slack both ways."""
    rule = f"--digit-px {text!r}: expected LO,HI in pixels with 8 <= LO, LO + 8 <= HI <= {SIZE - 8}, e.g. 44,64"
    try:
        lo, hi = (int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(rule) from None
    if not (8 <= lo and lo + 8 <= hi <= SIZE - 8):
        raise UsageError(rule)
    return lo, hi


def run(
    fsdd: str,
    output: str,
    *,
    seed: int,
    clips: int = 1000,
    pairing: str = "matched",
    utterances: int = 2,
    video_clips_per_image: int = 2,
    video_images: int | None = None,
    digits: str = "0,1,2,3,4,5,6,7,8,9",
    workers: int = 1,
    background: str = "noisy",
    digit_px: str = "{},{}".format(*DIGIT_PX),
) -> dict:
    """Validate the arguments and build the corpus; return the summary (see xkd.data.avdigits.build)."""
    require_ffmpeg()
    picked = _digits(digits)
    if seed < 0:
        raise UsageError(f"--seed must be non-negative (got {seed})")
    if not 1 <= clips <= MAX_CLIPS:
        raise UsageError(f"--clips must be between 1 and {MAX_CLIPS} (got {clips})")
    if pairing not in ("matched", "mismatched"):
        raise UsageError(f"--pairing must be matched or mismatched (got {pairing!r})")
    if pairing == "mismatched" and len(picked) < 2:
        raise UsageError("--pairing mismatched needs at least two --digits")
    if not 1 <= utterances <= MAX_UTTERANCES:
        raise UsageError(f"--utterances must be between 1 and {MAX_UTTERANCES} (got {utterances})")
    if not 0 <= video_clips_per_image <= MAX_CLIPS_PER_IMAGE:
        raise UsageError(f"--video-clips-per-image must be between 0 and {MAX_CLIPS_PER_IMAGE}")
    if video_images is not None and video_images < 0:
        raise UsageError(f"--video-images must be non-negative (got {video_images})")
    if workers < 1:
        raise UsageError(f"--workers must be positive (got {workers})")
    if background not in ("noisy", "clean"):
        raise UsageError(f"--background must be noisy or clean (got {background!r})")
    sides = _digit_px(digit_px)
    if not os.path.isdir(fsdd):
        raise UsageError(f"--fsdd {fsdd}: no such folder (the vendored copy is data/fsdd)")
    if os.path.exists(output) and not os.path.isdir(output):
        raise UsageError(f"--output {output}: exists and is not a folder")
    os.makedirs(output, exist_ok=True)
    return build(
        fsdd,
        output,
        seed=seed,
        clips=clips,
        pairing=pairing,
        utterances=utterances,
        video_clips_per_image=video_clips_per_image,
        video_images=video_images,
        digits=picked,
        workers=workers,
        background=background,
        digit_px=sides,
    )


def parser() -> argparse.ArgumentParser:
    ap = step_parser("components.build_avdigits", __doc__)
    ap.add_argument("--fsdd", required=True, help="Free Spoken Digit Dataset folder (vendored: data/fsdd)")
    ap.add_argument("--output", required=True, help="corpus folder (pretrain/, digits-video/, labels, build.json)")
    ap.add_argument("--seed", type=int, required=True, help="seed of every random choice (same seed, same bytes)")
    ap.add_argument("--clips", type=int, default=1000, help="pretrain clips, balanced over digits and speakers")
    ap.add_argument(
        "--pairing",
        default="matched",
        choices=("matched", "mismatched"),
        help="mismatched: the audio says another digit than the one shown (ablation)",
    )
    ap.add_argument("--utterances", type=int, default=2, help="spoken digits per clip (different recordings)")
    ap.add_argument("--video-clips-per-image", type=int, default=2, help="digits-video clips per held-out image")
    ap.add_argument("--video-images", type=int, default=None, help="held-out images rendered (default: all 899)")
    ap.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9", help="digits used, comma-separated")
    ap.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1), help="worker processes")
    ap.add_argument(
        "--background",
        choices=("noisy", "clean"),
        default="noisy",
        help="noisy: faint video noise and -45 dBFS audio noise; clean: a flat frame and digital silence "
        "(what masked reconstruction with normalised targets can learn on a CPU budget)",
    )
    ap.add_argument("--digit-px", default="{},{}".format(*DIGIT_PX), help="LO,HI: the digit's side drifts within")
    return ap


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    summary = run(
        args.fsdd,
        args.output,
        seed=args.seed,
        clips=args.clips,
        pairing=args.pairing,
        utterances=args.utterances,
        video_clips_per_image=args.video_clips_per_image,
        video_images=args.video_images,
        digits=args.digits,
        workers=args.workers,
        background=args.background,
        digit_px=args.digit_px,
    )
    if summary["up_to_date"]:
        log.info(f"{args.output}: up to date (same args, inputs and tool versions); nothing to do")
        return 0
    n = summary["clips"]
    log.info(
        f"{args.output}: {summary['pretrain']} pretrain + {summary['digits_video']} digits-video clips, "
        f"{summary['bytes'] / 1e6:.1f} MB ({summary['bytes'] / max(n, 1) / 1e3:.0f} kB/clip), "
        f"{summary['seconds']:.1f} s ({summary['seconds'] * summary['workers'] / max(n, 1):.3f} s/clip/worker)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
