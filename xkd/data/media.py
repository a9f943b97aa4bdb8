"""ffmpeg helpers: probe a media file and decode it in one streaming pass (ffmpeg-python).

Every failure becomes a `MediaError` carrying one of the reject codes of the cache contract
(`empty_file`, `unreadable`, `no_video`, `no_audio`, `too_short`, `timeout`, `decode_error`) and a
readable reason (ffmpeg's stderr tail), so callers can put it in the reject report instead of
crashing or dropping the file.

Lengths (one rule for clip and spectrogram caches, `check_declared_length` + `check_decoded_length`):
- a file's *real duration* is the longest duration its chosen video/audio streams declare; the container's
  duration (which a subtitle or data stream can set) is used only when neither stream declares one;
- every stream a cache uses must decode to at least `min_fraction` (0.5) of its *own* declared duration (the
  real duration when it declares none), capped at `--max-duration`; less means a truncated or corrupt file.
  So 1.5 s of video beside 10 s of audio is accepted (each stream decodes all it declares), while a stream
  declaring 10 s that decodes 4 s, or a container declaring 24.8 days around 2 s of data, is a `decode_error`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ffmpeg
import numpy as np

from xkd.errors import UsageError

REJECT_CODES = ("empty_file", "unreadable", "no_video", "no_audio", "too_short", "timeout", "decode_error")
STDERR_TAIL_CHARS = 400
# Frame geometry the cache accepts. libjpeg refuses sides beyond JPEG_MAX_DIMENSION = 65,500 px (torchvision's
# encode_jpeg segfaulted there); and no camera or screen format is wider than ~4:1 (32:9 ultrawide = 3.6), so a
# stream past 10:1 is a broken or synthetic file whose scaled frames would also be huge (4x4096 -> 112x114688).
JPEG_MAX_SIDE = 65500
MAX_ASPECT_RATIO = 10.0
# Default cap on the seconds decoded per file (`--max-duration`): the datasets XKD uses are 10 s clips (K400,
# AudioSet, VGGSound) or a few minutes at most (UCF101, HMDB51); a longer file keeps its first 10 minutes.
MAX_DURATION_S = 600.0


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


_HMS = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")


def _stream_duration(stream: dict) -> float | None:
    """The stream's own duration: ffprobe's `duration`, else Matroska/WebM's per-stream `DURATION` tag
    (HH:MM:SS.fraction, written by ffmpeg's and mkvmerge's muxers, which store no stream duration otherwise)."""
    d = _float(stream.get("duration"))
    if d:
        return d
    for key, value in (stream.get("tags") or {}).items():
        m = _HMS.match(str(value).strip()) if key.upper().startswith("DURATION") else None
        if m:
            return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]) or None
    return None


@dataclass(frozen=True)
class StreamInfo:
    index: int  # absolute stream index in the container (used for -map 0:<index>)
    codec: str
    start_s: float
    duration_s: float | None  # the stream's own declared duration, None when it declares none
    width: int = 0  # display width/height (rotation applied), video only
    height: int = 0
    sample_rate: int = 0
    channels: int = 0


@dataclass(frozen=True)
class Probe:
    duration_s: float  # real duration: longest declared video/audio stream (the container's when none declares)
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


def _video_stream(s: dict) -> StreamInfo:
    w, h = int(s.get("width") or 0), int(s.get("height") or 0)
    if _rotation(s) == 90:
        w, h = h, w
    start = _float(s.get("start_time")) or 0.0
    return StreamInfo(int(s["index"]), s.get("codec_name", "?"), start, _stream_duration(s), width=w, height=h)


def _audio_stream(s: dict) -> StreamInfo:
    return StreamInfo(
        int(s["index"]),
        s.get("codec_name", "?"),
        _float(s.get("start_time")) or 0.0,
        _stream_duration(s),
        sample_rate=int(s.get("sample_rate") or 0),
        channels=int(s.get("channels") or 0),
    )


def _is_picture(s: dict) -> bool:
    """Cover art / thumbnails: a video stream that is one still image, never the clip's video."""
    disposition = s.get("disposition") or {}
    return bool(disposition.get("attached_pic") or disposition.get("timed_thumbnails"))


def probe(path: str | os.PathLike, timeout_s: float) -> Probe:
    """Probe with ffprobe and choose the streams to decode: the video stream with the most pixels (never cover
    art) and the audio stream with the highest sample rate, then the most channels; ties go to the earlier
    stream. A file can carry a 320x180 preview before its 1280x720 video, or 8 kHz commentary before 48 kHz."""
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
    streams = info.get("streams", [])
    videos = [_video_stream(s) for s in streams if s.get("codec_type") == "video" and not _is_picture(s)]
    audios = [_audio_stream(s) for s in streams if s.get("codec_type") == "audio"]
    video = max(videos, key=lambda v: (v.width * v.height, -v.index), default=None)
    audio = max(audios, key=lambda a: (a.sample_rate, a.channels, -a.index), default=None)
    if video is None and audio is None:
        raise MediaError("unreadable", f"no audio or video stream found (format {fmt.get('format_name', '?')})")
    declared = [s.duration_s for s in (video, audio) if s is not None and s.duration_s]
    real = max(declared) if declared else (_float(fmt.get("duration")) or 0.0)
    return Probe(duration_s=real, video=video, audio=audio)


def check_declared_length(info: Probe, min_duration_s: float) -> None:
    """Before decoding: a file whose real duration is below --min-duration is `too_short`."""
    if info.duration_s and info.duration_s < min_duration_s:
        raise MediaError("too_short", f"{info.duration_s:.3f} s < --min-duration {min_duration_s:g} s")


def expected_seconds(info: Probe, stream: StreamInfo, max_duration_s: float | None) -> float:
    """What `stream` should decode to: its own declared duration (the real duration when it declares none),
    capped at --max-duration."""
    declared = stream.duration_s or info.duration_s
    return min(declared, max_duration_s) if max_duration_s else declared


def check_decoded_length(
    kind: str, decoded_s: float, expected_s: float | None, *, min_duration_s: float, min_fraction: float
) -> None:
    """After decoding one stream (`kind` = video or audio): `too_short` below --min-duration; `decode_error`
    when it decoded less than `min_fraction` of `expected_s` (a truncated or corrupt file)."""
    if decoded_s < min_duration_s:
        raise MediaError("too_short", f"{kind} decodes to {decoded_s:.3f} s < --min-duration {min_duration_s:g} s")
    if expected_s and decoded_s < min_fraction * expected_s:
        raise MediaError(
            "decode_error",
            f"{kind} decoded only {decoded_s:.2f} s of the {expected_s:.2f} s its stream declares "
            "(truncated or corrupt file)",
        )


def check_max_duration(max_duration: float) -> None:
    """`--max-duration` of the steps that decode media files: positive and finite, else one line (exit 2)."""
    if not 0 < max_duration < float("inf"):  # also catches nan
        raise UsageError(f"--max-duration must be a positive, finite number of seconds (got {max_duration:g})")


def truncated_to(info: Probe, max_duration_s: float | None) -> float | None:
    """The cap when the file is longer than --max-duration (only its first seconds were decoded), else None."""
    return max_duration_s if max_duration_s and info.duration_s > max_duration_s else None


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
    frames: np.ndarray | None  # uint8 [T, H, W, 3]; None without video, or when a frame_sink took the frames
    audio: np.ndarray | None  # int16 [n] mono
    n_frames: int = 0
    size: tuple[int, int] | None = None  # (width, height) of the frames


def _drain(fd: int, into: bytearray) -> None:
    while chunk := os.read(fd, 1 << 16):
        into += chunk


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
    max_duration_s: float | None = None,
    frame_sink: Callable[[np.ndarray], None] | None = None,
) -> Decoded:
    """One ffmpeg pass over the chosen streams, at most the first `max_duration_s` seconds (ffmpeg's input -t):
    video resampled to `fps` (short side resized, bilinear) as raw RGB on stdout, audio as 16-bit mono PCM at
    `sample_rate` on a second pipe. Frames are handed to `frame_sink` one at a time as they arrive (memory stays
    one frame, whatever the length), or collected into `Decoded.frames` without one. Nothing is written to disk,
    so a killed run leaves no temp files."""
    inp = ffmpeg.input(ffmpeg_path(path), threads=1, **({"t": max_duration_s} if max_duration_s else {}))
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
        outputs.append(ffmpeg.output(v, "pipe:1", format="rawvideo", pix_fmt="rgb24"))
    audio_r = audio_w = None
    if with_audio:
        audio_r, audio_w = os.pipe()  # ffmpeg writes the PCM to this fd (`pipe:N`), read by a thread below
        # -ac 1 downmixes stereo/5.1 with ffmpeg's standard matrix
        a = inp[str(info.audio.index)]
        outputs.append(ffmpeg.output(a, f"pipe:{audio_w}", format="s16le", acodec="pcm_s16le", ac=1, ar=sample_rate))
    cmd = ffmpeg.merge_outputs(*outputs).global_args("-nostdin", "-hide_banner", "-v", "error").compile()
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if with_video else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(audio_w,) if with_audio else (),
        )
    except BaseException:
        for fd in (audio_r, audio_w):
            if fd is not None:
                os.close(fd)
        raise
    if audio_w is not None:
        os.close(audio_w)  # the child holds its copy; our read end sees EOF when ffmpeg exits
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout_s, on_timeout)
    err, pcm = bytearray(), bytearray()
    readers = [threading.Thread(target=_drain, args=(proc.stderr.fileno(), err), daemon=True)]
    if audio_r is not None:
        readers.append(threading.Thread(target=_drain, args=(audio_r, pcm), daemon=True))
    timer.start()
    for t in readers:
        t.start()
    collected: list[np.ndarray] = []
    n_frames = 0
    try:
        if with_video:
            frame_bytes = size[0] * size[1] * 3
            while len(buf := proc.stdout.read(frame_bytes)) == frame_bytes:
                frame = np.frombuffer(buf, np.uint8).reshape(size[1], size[0], 3)
                (frame_sink or collected.append)(frame)
                n_frames += 1
        proc.wait()
    finally:
        timer.cancel()
        if proc.returncode is None:  # the frame sink raised (e.g. a JPEG failure): stop ffmpeg
            proc.kill()
            proc.wait()
        for t in readers:
            t.join()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if audio_r is not None:
            os.close(audio_r)
    if proc.returncode != 0:
        if timed_out.is_set():
            raise MediaError("timeout", f"ffmpeg took longer than {timeout_s:g} s")
        raise MediaError("decode_error", f"ffmpeg exited with {proc.returncode}: {_tail(bytes(err))}")
    if with_video and n_frames == 0:
        raise MediaError("decode_error", f"no video frame decoded: {_tail(bytes(err)) or 'empty output'}")
    audio = None
    if with_audio:
        audio = np.frombuffer(pcm, "<i2", count=len(pcm) // 2)
        if audio.size == 0:
            raise MediaError("decode_error", f"no audio sample decoded: {_tail(bytes(err)) or 'empty output'}")
    frames = np.stack(collected) if collected else None
    return Decoded(frames=frames, audio=audio, n_frames=n_frames, size=size)
