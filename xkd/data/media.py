"""ffmpeg helpers: probe a media file and decode it in one pass (ffmpeg-python).

Every failure becomes a `MediaError` carrying one of the reject codes of the cache contract
(`empty_file`, `unreadable`, `no_video`, `no_audio`, `too_short`, `timeout`, `decode_error`) and a
readable reason (ffmpeg's stderr tail), so callers can put it in the reject report instead of
crashing or dropping the file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np

from xkd.errors import UsageError

REJECT_CODES = ("empty_file", "unreadable", "no_video", "no_audio", "too_short", "timeout", "decode_error")
STDERR_TAIL_CHARS = 400
# Frame geometry the cache accepts. JPEG stores width/height in 16 bits (libjpeg fails, torchvision's encode_jpeg
# segfaults, beyond 65,535 px); and no camera or screen format is wider than ~4:1 (32:9 ultrawide = 3.6), so a
# stream past 10:1 is a broken or synthetic file whose scaled frames would also be huge (4x4096 -> 112x114688).
JPEG_MAX_SIDE = 65535
MAX_ASPECT_RATIO = 10.0


class MediaError(Exception):
    """A file that cannot become a cache entry; `code` is one of REJECT_CODES."""

    def __init__(self, code: str, reason: str):
        assert code in REJECT_CODES, code
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def require_ffmpeg() -> None:
    """Fail with one clear line when the ffmpeg/ffprobe binaries are missing."""
    missing = [b for b in ("ffmpeg", "ffprobe") if shutil.which(b) is None]
    if missing:
        raise UsageError(
            f"{' and '.join(missing)} not found on PATH; run `make install` "
            "(installs Debian's ffmpeg) or install FFmpeg yourself"
        )


def _tail(stderr: bytes | str | None) -> str:
    if not stderr:
        return ""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    text = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return text[-STDERR_TAIL_CHARS:]


def _float(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


@dataclass(frozen=True)
class StreamInfo:
    index: int  # absolute stream index in the container (used for -map 0:<index>)
    codec: str
    start_s: float
    duration_s: float | None
    width: int = 0  # display width/height (rotation applied), video only
    height: int = 0
    sample_rate: int = 0
    channels: int = 0


@dataclass(frozen=True)
class Probe:
    duration_s: float
    video: StreamInfo | None
    audio: StreamInfo | None


def ffmpeg_path(path: str | os.PathLike) -> str:
    """The input as ffmpeg/ffprobe must see it: an absolute `file:` URL, so that a file named `pipe:x.mp4`,
    `concat:a|b` or `http:...` is read as that file and never opened as an ffmpeg protocol."""
    return "file:" + os.path.abspath(os.fspath(path))


def _rotation(stream: dict) -> int:
    rot = stream.get("tags", {}).get("rotate")
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            rot = side["rotation"]
    try:
        return int(float(rot)) % 180 if rot is not None else 0
    except ValueError:
        return 0


def probe(path: str | os.PathLike, timeout_s: float) -> Probe:
    """Probe with ffprobe; picks the first real video stream (not cover art) and the first audio stream."""
    path = Path(path)
    if not path.is_file():
        raise MediaError("unreadable", "file not found")
    if path.stat().st_size == 0:
        raise MediaError("empty_file", "file has 0 bytes")
    # subprocess, not ffmpeg.probe: ffmpeg-python 0.2's probe has no timeout (a `timeout=` kwarg becomes
    # ffprobe's network `-timeout` option), so a stuck ffprobe would hang the whole extraction
    cmd = ["ffprobe", "-hide_banner", "-show_format", "-show_streams", "-of", "json", ffmpeg_path(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise MediaError("timeout", f"ffprobe took longer than {timeout_s:g} s") from None
    if proc.returncode != 0:
        raise MediaError("unreadable", f"ffprobe could not read the file: {_tail(proc.stderr)}")
    info = json.loads(proc.stdout)
    fmt = info.get("format", {})
    video = audio = None
    for s in info.get("streams", []):
        kind = s.get("codec_type")
        if kind == "video" and video is None and not s.get("disposition", {}).get("attached_pic"):
            w, h = int(s.get("width") or 0), int(s.get("height") or 0)
            if _rotation(s) == 90:
                w, h = h, w
            video = StreamInfo(
                int(s["index"]),
                s.get("codec_name", "?"),
                _float(s.get("start_time")) or 0.0,
                _float(s.get("duration")),
                width=w,
                height=h,
            )
        elif kind == "audio" and audio is None:
            audio = StreamInfo(
                int(s["index"]),
                s.get("codec_name", "?"),
                _float(s.get("start_time")) or 0.0,
                _float(s.get("duration")),
                sample_rate=int(s.get("sample_rate") or 0),
                channels=int(s.get("channels") or 0),
            )
    durations = [d for d in (_float(fmt.get("duration")), video and video.duration_s, audio and audio.duration_s) if d]
    if video is None and audio is None:
        raise MediaError("unreadable", f"no audio or video stream found (format {fmt.get('format_name', '?')})")
    return Probe(duration_s=max(durations) if durations else 0.0, video=video, audio=audio)


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Output (w, h) with the shorter side set to `short_side` and the aspect ratio kept."""
    if width <= 0 or height <= 0:
        raise MediaError("decode_error", f"video stream reports size {width}x{height}")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise MediaError(
            "decode_error",
            f"unsupported frame geometry: {width}x{height} has an aspect ratio beyond {MAX_ASPECT_RATIO:g}:1",
        )
    if width <= height:
        out = short_side, max(1, round(height * short_side / width))
    else:
        out = max(1, round(width * short_side / height)), short_side
    if max(out) > JPEG_MAX_SIDE:
        raise MediaError(
            "decode_error",
            f"unsupported frame geometry: {width}x{height} scales to {out[0]}x{out[1]}, "
            f"beyond JPEG's {JPEG_MAX_SIDE} px limit",
        )
    return out


@dataclass
class Decoded:
    frames: np.ndarray | None  # uint8 [T, H, W, 3]
    audio: np.ndarray | None  # int16 [n] mono


def decode(
    path: str | os.PathLike,
    info: Probe,
    *,
    fps: float | None,
    short_side: int,
    sample_rate: int,
    with_video: bool,
    with_audio: bool,
    timeout_s: float,
) -> Decoded:
    """One ffmpeg pass: video resampled to `fps` (short side resized, bilinear) as raw RGB on stdout,
    and the first audio stream as 16-bit mono PCM at `sample_rate` into a temp file."""
    inp = ffmpeg.input(ffmpeg_path(path), threads=1)
    outputs = []
    size = None
    if with_video:
        size = scaled_size(info.video.width, info.video.height, short_side)
        # round=up: output frame k shows the last native frame at or before k/fps, the official
        # sampling rule ("nearest earlier frame"); ffmpeg's default would take the nearest frame.
        v = (
            inp[str(info.video.index)]
            .filter("fps", fps=fps, round="up")
            .filter("scale", size[0], size[1], flags="bilinear")
        )
        outputs.append(ffmpeg.output(v, "pipe:", format="rawvideo", pix_fmt="rgb24"))
    with tempfile.TemporaryDirectory(prefix="xkd-audio-") as tmp:
        audio_file = os.path.join(tmp, "audio.s16le")
        if with_audio:
            # -ac 1 downmixes stereo/5.1 with ffmpeg's standard matrix; the first audio stream only.
            outputs.append(
                ffmpeg.output(
                    inp[str(info.audio.index)], audio_file, format="s16le", acodec="pcm_s16le", ac=1, ar=sample_rate
                )
            )
        cmd = ffmpeg.merge_outputs(*outputs).global_args("-nostdin", "-hide_banner", "-v", "error")
        proc = cmd.run_async(pipe_stdout=True, pipe_stderr=True)
        try:
            raw, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise MediaError("timeout", f"ffmpeg took longer than {timeout_s:g} s") from None
        if proc.returncode != 0:
            raise MediaError("decode_error", f"ffmpeg exited with {proc.returncode}: {_tail(err)}")
        frames = audio = None
        if with_video:
            frame_bytes = size[0] * size[1] * 3
            if len(raw) < frame_bytes:
                raise MediaError("decode_error", f"no video frame decoded: {_tail(err) or 'empty output'}")
            frames = np.frombuffer(raw[: len(raw) // frame_bytes * frame_bytes], np.uint8)
            frames = frames.reshape(-1, size[1], size[0], 3)
        if with_audio:
            audio = np.fromfile(audio_file, dtype="<i2")
            if audio.size == 0:
                raise MediaError("decode_error", f"no audio sample decoded: {_tail(err) or 'empty output'}")
    return Decoded(frames=frames, audio=audio)
