"""One source file -> one clip-cache entry: probe, decode once (ffmpeg), JPEG-compress each frame as it arrives,
check lengths (the shared rule of xkd.data.media).

Called per input by `xkd.data.cache_build.build_cache` from the `components.extract_clips` step.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from xkd.data.cache_build import Job
from xkd.data.media import (
    MediaError,
    check_declared_length,
    check_decoded_length,
    decode,
    expected_seconds,
    probe,
    truncated_to,
)
from xkd.data.shards import array_bytes, pack_jpegs

JPEG_QUALITY = 90


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """One uint8 [H, W, 3] frame -> baseline JPEG (libjpeg via Pillow, 4:2:0, the same bytes torchvision's
    encode_jpeg wrote). Pillow raises instead of crashing on what libjpeg cannot store (torchvision segfaulted),
    so a failure is a `decode_error` reject, never a dead worker."""
    out = io.BytesIO()
    try:
        Image.fromarray(frame, "RGB").save(out, format="JPEG", quality=quality)
    except (OSError, ValueError) as err:
        h, w = frame.shape[:2]
        raise MediaError("decode_error", f"JPEG encoding of a {w}x{h} frame failed: {err}") from None
    return out.getvalue()


def encode_jpegs(frames: np.ndarray, quality: int) -> list[bytes]:
    return [encode_jpeg(f, quality) for f in frames]


def extract_one(job: Job, params: dict) -> tuple[dict, dict[str, bytes]]:
    """Probe, decode once, compress, check lengths. Raises MediaError for every kind of bad input."""
    info = probe(job.path, params["timeout_s"])
    if info.video is None:
        raise MediaError("no_video", f"no video stream (audio {info.audio.codec} only)")
    if params["require_audio"] and info.audio is None:
        raise MediaError("no_audio", "no audio stream and --require-audio is set")
    check_declared_length(info, params["min_duration_s"])
    cap = params.get("max_duration_s")
    jpegs: list[bytes] = []
    dec = decode(
        job.path,
        info,
        fps=params["fps"],
        short_side=params["short_side"],
        sample_rate=params["sample_rate"],
        with_video=True,
        with_audio=info.audio is not None,
        timeout_s=params["timeout_s"],
        max_duration_s=cap,
        # compressed as they arrive: memory holds one raw frame, not the whole video (30 min = 2.7 GB raw)
        frame_sink=lambda frame: jpegs.append(encode_jpeg(frame, params["jpeg_quality"])),
    )
    rule = {"min_duration_s": params["min_duration_s"], "min_fraction": params["min_decoded_fraction"]}
    video_s = dec.n_frames / params["fps"]
    check_decoded_length("video", video_s, expected_seconds(info, info.video, cap), **rule)
    audio = None
    members = {"frames": pack_jpegs(jpegs)}
    audio_s = 0.0
    if dec.audio is not None:
        audio_s = len(dec.audio) / params["sample_rate"]
        # audio shorter than --min-duration is kept unless --require-audio; a truncated audio stream never is
        audio_rule = rule if params["require_audio"] else {**rule, "min_duration_s": 0.0}
        check_decoded_length("audio", audio_s, expected_seconds(info, info.audio, cap), **audio_rule)
        audio = {
            "sample_rate": params["sample_rate"],
            "samples": int(len(dec.audio)),
            "start_s": info.audio.start_s,
            "codec": info.audio.codec,
            "encoding": "pcm_s16le",
            "stream_index": info.audio.index,
        }
        members["pcm16.npy"] = array_bytes(dec.audio)
    width, height = dec.size
    video = {
        "fps": params["fps"],
        "frames": dec.n_frames,
        "height": int(height),
        "width": int(width),
        "start_s": info.video.start_s,
        "codec": info.video.codec,
        "encoding": f"jpeg-q{params['jpeg_quality']}",
        "stream_index": info.video.index,
    }
    # duration_s: the seconds the entry holds (longest decoded stream), not what a header claims; bounded by the
    # real duration because n frames at `fps` overstate the video by up to one frame period
    held_s = max(video_s, audio_s)
    declared_s = min(info.duration_s, cap) if cap else info.duration_s
    duration_s = min(held_s, declared_s) if declared_s else held_s
    fields = {"duration_s": round(duration_s, 6), "truncated_to_s": truncated_to(info, cap)}
    return {**fields, "video": video, "audio": audio}, members
