"""Clip extraction: raw videos -> clip cache (JPEG frames at 8 fps, short side 112; 16 kHz mono PCM).

    python -m components.extract_clips --input PATH --output DIR [--require-audio [true|false]] [--fps 8]
        [--short-side 112] [--sample-rate 16000] [--min-duration 1.0] [--max-duration 600] [--workers N]

PATH is a folder (searched recursively for media files), a text file of paths, or one media file.
The whole duration is kept up to --max-duration (default 600 s; a longer file keeps its first 600 s and its
entry records `truncated_to_s`): pretraining samples a random 4 s window every epoch, evaluation takes
uniformly spaced windows. Frames are JPEG-compressed as they are decoded, so a worker's memory is about the
entry it builds (~66 KiB of JPEG + 32 KB of PCM per second at the defaults: ~60 MB for 600 s), not the raw video.
Stream choice and the length rules (each used stream must decode at least half of its own declared duration):
xkd/data/media.py. Output layout: docs/DESIGN.md "Cache directory" contract.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from xkd.data.cache_build import build_cache, check_step_args, summarize
from xkd.data.clips import JPEG_QUALITY, extract_one
from xkd.data.geometry import FPS, VIDEO_SIZE
from xkd.data.inputs import media_jobs
from xkd.data.logmel import SAMPLE_RATE
from xkd.data.media import MAX_DURATION_S, check_max_duration, require_ffmpeg
from xkd.errors import UsageError, cli, step_parser

# Upper bounds, checked before any work: past them a run never finishes or fills the disk (--fps 1e9 asks ffmpeg
# for 1e9 frames a second; --sample-rate 1e8 makes 1.2 GB of PCM for 6 s). 120 fps is the fastest common camera
# rate (XKD reads 8); 192 kHz is the highest standard audio rate; a short side of 4096 px is beyond 4K UHD (2160).
MAX_FPS = 120.0
MAX_SAMPLE_RATE = 192_000
MAX_SHORT_SIDE = 4096


def run(
    input: str,
    output: str,
    *,
    require_audio: bool = False,
    fps: float = float(FPS),  # a float, as caches have always recorded it (the params hash is unchanged)
    short_side: int = VIDEO_SIZE,
    sample_rate: int = SAMPLE_RATE,
    min_duration: float = 1.0,
    workers: int = 1,
    timeout_s: float = 600.0,
    jpeg_quality: int = JPEG_QUALITY,
    min_decoded_fraction: float = 0.5,
    max_duration: float = MAX_DURATION_S,
) -> dict:
    """Extract every media file under `input` into the clip cache `output`; return the report."""
    require_ffmpeg()
    if fps <= 0 or short_side <= 0 or sample_rate <= 0:
        raise UsageError("--fps, --short-side and --sample-rate must be positive")
    check_step_args(workers=workers, min_duration=min_duration, timeout_s=timeout_s)
    check_max_duration(max_duration)
    for flag, value, bound in (
        ("--fps", fps, MAX_FPS),
        ("--sample-rate", sample_rate, MAX_SAMPLE_RATE),
        ("--short-side", short_side, MAX_SHORT_SIDE),
    ):
        if not value <= bound:  # `not <=` also catches nan
            raise UsageError(f"{flag} must be at most {bound:g} (got {value:g})")
    jobs, ignored = media_jobs(input)
    params = {
        "fps": fps,
        "short_side": short_side,
        "sample_rate": sample_rate,
        "min_duration_s": min_duration,
        "require_audio": require_audio,
        "timeout_s": timeout_s,
        "jpeg_quality": jpeg_quality,
        "min_decoded_fraction": min_decoded_fraction,
        "max_duration_s": max_duration,
        "step": "extract_clips/1",
    }
    return build_cache(
        jobs,
        Path(output),
        params,
        extract_one,
        workers=workers,
        desc="extract clips",
        extra_report={"ignored_non_media": ignored},
    )


def _true_or_false(text: str) -> bool:
    """params.yaml's `extract.require_audio` as dvc.yaml renders it (true/false); any other word is refused:
    bool("false") would be True."""
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def parser() -> argparse.ArgumentParser:
    ap = step_parser("components.extract_clips", __doc__)
    ap.add_argument("--input", required=True, help="folder (recursive), text file of paths, or a media file")
    ap.add_argument("--output", required=True, help="clip cache directory")
    ap.add_argument(
        "--require-audio",
        nargs="?",
        const=True,
        default=False,
        type=_true_or_false,
        metavar="true|false",
        help="reject files without an audio stream (a bare --require-audio is true; dvc.yaml passes the value)",
    )
    ap.add_argument("--fps", type=float, default=float(FPS), help=f"frames per second kept (XKD's views read {FPS})")
    ap.add_argument(
        "--short-side", type=int, default=VIDEO_SIZE, help=f"{VIDEO_SIZE} for pretraining/SVM, 224+ for fine-tuning"
    )
    ap.add_argument("--sample-rate", type=int, default=SAMPLE_RATE, help="audio sample rate (Hz), mono")
    ap.add_argument("--min-duration", type=float, default=1.0, help="seconds; shorter files are rejected")
    ap.add_argument(
        "--max-duration",
        type=float,
        default=MAX_DURATION_S,
        help=f"seconds decoded per file at most; a longer file keeps its first ones (default {MAX_DURATION_S:g})",
    )
    ap.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1), help="worker processes")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per ffmpeg call")
    return ap


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    report = run(
        args.input,
        args.output,
        require_audio=args.require_audio,
        fps=args.fps,
        short_side=args.short_side,
        sample_rate=args.sample_rate,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        workers=args.workers,
        timeout_s=args.timeout,
    )
    return summarize(report, args.output)


if __name__ == "__main__":
    sys.exit(main())
