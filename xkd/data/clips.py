"""One source file -> one clip-cache entry: probe, decode once (ffmpeg), check lengths, JPEG-compress the frames.

Called per input by `xkd.data.cache_build.build_cache` from the `components.extract_clips` step.
"""

from __future__ import annotations

import numpy as np

from xkd.data.cache_build import Job
from xkd.data.media import MediaError, decode, probe
from xkd.data.shards import array_bytes, pack_jpegs

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
