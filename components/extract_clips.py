"""Clip extraction: raw videos -> clip cache (JPEG frames at 8 fps, short side 112; 16 kHz mono PCM).

    python -m components.extract_clips --input PATH --output DIR [--require-audio] [--fps 8]
        [--short-side 112] [--sample-rate 16000] [--min-duration 1.0] [--workers N]

PATH is a folder (searched recursively for media files), a text file of paths, or one media file.
The whole duration is kept: pretraining samples a random 4 s window every epoch, evaluation takes
uniformly spaced windows. Output layout: DESIGN.md "Cache directory" contract.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from xkd.data.cache_build import Job, build_cache
from xkd.data.inputs import media_jobs
from xkd.data.media import MediaError, decode, probe, require_ffmpeg
from xkd.data.shards import array_bytes, pack_jpegs
from xkd.errors import UsageError, cli

JPEG_QUALITY = 90


def encode_jpegs(frames: np.ndarray, quality: int) -> list[bytes]:
    import torch
    from torchvision.io import encode_jpeg

    torch.set_num_threads(1)
    video = torch.from_numpy(frames.copy()).permute(0, 3, 1, 2)  # the decoder's buffer is read-only
    tensors = [f.contiguous() for f in video]
    return [bytes(t.numpy()) for t in encode_jpeg(tensors, quality=quality)]


def extract_one(job: Job, params: dict) -> tuple[dict, dict[str, bytes]]:
    """Probe, decode once, check lengths, compress. Raises MediaError for every kind of bad input."""
    info = probe(job.path, params["timeout_s"])
    if info.video is None:
        raise MediaError("no_video", f"no video stream (audio {info.audio.codec} only)")
    if params["require_audio"] and info.audio is None:
        raise MediaError("no_audio", "no audio stream and --require-audio is set")
    if info.duration_s and info.duration_s < params["min_duration_s"]:
        raise MediaError("too_short", f"{info.duration_s:.3f} s < --min-duration {params['min_duration_s']:g} s")
    dec = decode(
        job.path,
        info,
        fps=params["fps"],
        short_side=params["short_side"],
        sample_rate=params["sample_rate"],
        with_video=True,
        with_audio=info.audio is not None,
        timeout_s=params["timeout_s"],
    )
    n_frames = len(dec.frames)
    decoded_s = n_frames / params["fps"]
    if decoded_s < params["min_duration_s"]:
        raise MediaError(
            "too_short",
            f"decoded {n_frames} frames = {decoded_s:.3f} s < --min-duration {params['min_duration_s']:g} s",
        )
    if info.duration_s and decoded_s < params["min_decoded_fraction"] * info.duration_s:
        raise MediaError(
            "decode_error",
            f"decoded only {decoded_s:.2f} s of the {info.duration_s:.2f} s the "
            "container declares (truncated or corrupt file)",
        )
    audio = None
    members = {"frames": pack_jpegs(encode_jpegs(dec.frames, params["jpeg_quality"]))}
    if dec.audio is not None:
        audio_s = len(dec.audio) / params["sample_rate"]
        if params["require_audio"] and audio_s < params["min_duration_s"]:
            raise MediaError(
                "too_short", f"audio decodes to {audio_s:.3f} s < --min-duration {params['min_duration_s']:g} s"
            )
        audio = {
            "sample_rate": params["sample_rate"],
            "samples": int(len(dec.audio)),
            "start_s": info.audio.start_s,
            "codec": info.audio.codec,
            "encoding": "pcm_s16le",
        }
        members["pcm16.npy"] = array_bytes(dec.audio)
    height, width = dec.frames.shape[1:3]
    video = {
        "fps": params["fps"],
        "frames": n_frames,
        "height": int(height),
        "width": int(width),
        "start_s": info.video.start_s,
        "codec": info.video.codec,
        "encoding": f"jpeg-q{params['jpeg_quality']}",
    }
    return {"duration_s": round(info.duration_s, 6), "video": video, "audio": audio}, members


def run(
    input: str,
    output: str,
    *,
    require_audio: bool = False,
    fps: float = 8.0,
    short_side: int = 112,
    sample_rate: int = 16000,
    min_duration: float = 1.0,
    workers: int = 1,
    timeout_s: float = 600.0,
    jpeg_quality: int = JPEG_QUALITY,
    min_decoded_fraction: float = 0.5,
) -> dict:
    """Extract every media file under `input` into the clip cache `output`; return the report."""
    require_ffmpeg()
    if fps <= 0 or short_side <= 0 or sample_rate <= 0 or min_duration < 0 or workers < 1:
        raise UsageError(
            "--fps, --short-side, --sample-rate and --workers must be positive, --min-duration non-negative"
        )
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


def summarize(report: dict, output: str) -> int:
    """Print one line per outcome; exit status 0 only when at least one clip is in the cache."""
    for row in report["rejected"]:
        print(f"rejected [{row['code']}] {row['path']}: {row['reason']}", file=sys.stderr)
    print(
        f"{output}: {report['inputs']} inputs, {report['ok']} ok, {len(report['rejected'])} rejected "
        f"{report['rejected_by_code']}",
        file=sys.stderr,
    )
    if report["ok"] == 0:
        print(f"error: no usable clip in {report['inputs']} inputs; see {output}/report.json", file=sys.stderr)
        return 1
    return 0


@cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m components.extract_clips", description=__doc__.split("\n")[0])
    ap.add_argument("--input", required=True, help="folder (recursive), text file of paths, or a media file")
    ap.add_argument("--output", required=True, help="clip cache directory")
    ap.add_argument("--require-audio", action="store_true", help="reject files without an audio stream")
    ap.add_argument("--fps", type=float, default=8.0)
    ap.add_argument("--short-side", type=int, default=112, help="112 for pretraining/SVM, 224+ for fine-tuning")
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("--min-duration", type=float, default=1.0, help="seconds; shorter files are rejected")
    ap.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per ffmpeg call")
    args = ap.parse_args(argv)
    report = run(
        args.input,
        args.output,
        require_audio=args.require_audio,
        fps=args.fps,
        short_side=args.short_side,
        sample_rate=args.sample_rate,
        min_duration=args.min_duration,
        workers=args.workers,
        timeout_s=args.timeout,
    )
    return summarize(report, args.output)


if __name__ == "__main__":
    sys.exit(main())
