"""XKD's input geometry, defined once (docs/xkd_spec.md §1.1-§1.3), and the check that a cache can feed it.

The views take 32 frames over 4 s (8 fps) and 64 000 samples over the same 4 s (16 kHz, see
`xkd.data.logmel` for the audio front end); the local views take 1 s. The clip cache records the fps
and sample rate it was extracted at (`extract_clips --fps/--sample-rate` are configurable), so every
reader checks them here when it is built: a cache at another rate is refused with one clear line
instead of silently giving 4 s windows that are not 4 s, or audio and video that drift apart.
"""

from __future__ import annotations

from xkd.data.logmel import HOP, N_MELS, SAMPLE_RATE, frames_for
from xkd.errors import UsageError

FPS = 8  # frames per second of the clip cache the views are defined on
CLIP_S = 4  # seconds of a global view
CLIP_FRAMES = CLIP_S * FPS  # 32
CLIP_SAMPLES = CLIP_S * SAMPLE_RATE  # 64 000
CLIP_SPEC_FRAMES = frames_for(CLIP_SAMPLES)  # 448 log-mel frames
LOCAL_FRAMES = CLIP_FRAMES // 4  # temporal ratio 4: 8 frames = 1 s
LOCAL_SAMPLES = CLIP_SAMPLES // 4  # 16 000
VIDEO_SIZE = 112  # global view side; also the clip cache's short side (extract_clips --short-side)
LOCAL_SIZE = 96  # local view side


def _refuse(directory, what: str, found: set, expected, fix: str) -> None:
    shown = ", ".join(str(v) for v in sorted(found, key=str))
    raise UsageError(
        f"{directory} holds {what} {shown}, but XKD's views need {expected} "
        f"({CLIP_FRAMES} frames and {CLIP_SAMPLES} samples over {CLIP_S} s); {fix}"
    )


def check_clip_cache(reader, *, audio: bool) -> None:
    """Refuse a clip cache whose recorded fps (and, when its audio is used, sample rate) is not the views'."""
    entries = reader.entries.values()
    fps = {float(e["video"]["fps"]) for e in entries if e.get("video")}
    if fps - {float(FPS)}:
        _refuse(reader.directory, "clips at", {f"{f:g} fps" for f in fps}, f"{FPS} fps", f"re-extract with --fps {FPS}")
    if audio:
        check_sample_rate(reader, "audio at", f"re-extract with --sample-rate {SAMPLE_RATE}")


def check_sample_rate(reader, what: str, fix: str) -> None:
    """Refuse a cache whose entries record audio at another rate than the log-mel front end's."""
    rates = {int(e["audio"]["sample_rate"]) for e in reader.entries.values() if e.get("audio")}
    if rates - {SAMPLE_RATE}:
        _refuse(reader.directory, what, {f"{r} Hz" for r in rates}, f"{SAMPLE_RATE} Hz", fix)


def check_spectrogram_cache(reader) -> None:
    """Refuse a spectrogram cache made at another sample rate, hop or number of mel bands than the front end."""
    entries = list(reader.entries.values())
    check_sample_rate(
        reader, "log-mels of audio at", f"rebuild it from a clip cache extracted with --sample-rate {SAMPLE_RATE}"
    )
    layout = {(e["spectrogram"]["hop"], e["spectrogram"]["n_mels"]) for e in entries if e.get("spectrogram")}
    if layout - {(HOP, N_MELS)}:
        _refuse(
            reader.directory,
            "log-mels with (hop, mel bands)",
            layout,
            f"hop {HOP} and {N_MELS} bands",
            "rebuild it with components.cache_spectrograms",
        )
