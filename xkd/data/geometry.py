"""XKD's input geometry (docs/xkd_spec.md §1.1-§1.3): how many frames, samples, log-mel frames and pixels the
views hold, derived from the model config, and the check that a cache can feed it.

The paper's views take 32 frames over 4 s (8 fps) and 64 000 samples over the same 4 s (16 kHz, see
`xkd.data.logmel` for the audio front end); the local views take 1 s. A config may shrink them (e.g. 1 s clips
for a corpus of spoken digits): `Geometry.from_model(cfg)` reads them from the model's `video_input`,
`video_local`, `audio_input` and `audio_local` and refuses a config whose audio and video spans disagree. The
module constants below are the paper's values (`PAPER`), kept for the extraction defaults and benchmarks.
The clip cache records the fps and sample rate it was extracted at (`extract_clips --fps/--sample-rate` are
configurable), so every reader checks them here when it is built: a cache at another rate is refused with one
clear line instead of silently giving windows that are not the length they claim, or audio and video that drift
apart.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Geometry:
    """Sizes of the views: the global window (frames at `fps`, samples at 16 kHz, their log-mel frames, the crop
    side) and the local views (video frames and side; the audio local view's samples and log-mel frames, drawn
    independently of the video local view as the official code does, so its length may differ)."""

    fps: int
    clip_frames: int
    clip_samples: int
    clip_spec_frames: int
    size: int
    local_frames: int
    local_size: int
    local_samples: int
    local_spec_frames: int

    @property
    def clip_s(self) -> float:
        return self.clip_frames / self.fps

    def describe(self) -> str:
        return f"{self.clip_frames} frames and {self.clip_samples} samples over {self.clip_s:g} s"

    @classmethod
    def from_model(cls, cfg) -> Geometry:
        """The geometry a model config (`model.XKDConfig`) asks for; a config the views cannot produce raises
        model.ConfigError naming the keys (the training config turns it into a UsageError)."""
        from model import ConfigError

        def refuse(message: str):
            raise ConfigError(message)

        video, local, audio, audio_local = (
            tuple(cfg.video_input),
            tuple(cfg.video_local),
            tuple(cfg.audio_input),
            tuple(cfg.audio_local),
        )
        for key, shape, channels in (
            ("video_input", video, 3),
            ("video_local", local, 3),
            ("audio_input", audio, 1),
            ("audio_local", audio_local, 1),
        ):
            want = 4 if key.startswith("video") else 3
            if len(shape) != want or shape[0] != channels:
                refuse(f"model.{key} {shape} must be {want} numbers starting with {channels} channel(s)")
            if key.startswith("video") and shape[2] != shape[3]:
                refuse(f"model.{key} {shape}: the views are square crops, height must equal width")
            if key.startswith("audio") and shape[1] != N_MELS:
                refuse(f"model.{key} {shape}: the log-mel front end gives {N_MELS} mel bands, not {shape[1]}")
        # the audio window spans the video window's seconds: 16 kHz over clip_frames at the cache's fps
        clip_samples = video[1] * SAMPLE_RATE // FPS
        if audio[2] != frames_for(clip_samples):
            refuse(
                f"model.audio_input {audio} does not span model.video_input's {video[1]} frames at {FPS} fps "
                f"({clip_samples} samples = {frames_for(clip_samples)} log-mel frames at hop {HOP}); "
                f"set model.audio_input to [1, {N_MELS}, {frames_for(clip_samples)}]"
            )
        if local[1] > video[1] or local[2] > video[2]:
            refuse(f"model.video_local {local} is larger than model.video_input {video}: local views are crops of it")
        if audio_local[2] > audio[2]:
            refuse(f"model.audio_local {audio_local} is longer than model.audio_input {audio}")
        for modality, size_key, local_key, patch_key, local_size in (
            ("video", "video_input", "video_local", "video_tubelet", local[1:]),
            ("audio", "audio_input", "audio_local", "audio_patch", audio_local[1:]),
        ):
            enc = cfg.encoder(modality)
            for key, size in ((size_key, None), (local_key, local_size)):
                try:
                    enc.grid(size)  # the encoder config's own divisibility rule
                except ConfigError as err:
                    refuse(f"model.{key} / model.{patch_key}: {err}")
        return cls(
            fps=FPS,
            clip_frames=video[1],
            clip_samples=clip_samples,
            clip_spec_frames=audio[2],
            size=video[2],
            local_frames=local[1],
            local_size=local[2],
            local_samples=_samples_for(audio_local[2], clip_samples, audio[2]),
            local_spec_frames=audio_local[2],
        )


def _samples_for(spec_frames: int, clip_samples: int, clip_spec_frames: int) -> int:
    """Samples of the audio local view: its share of the global window's samples (1 s of 4 s in the paper),
    moved into the range that gives exactly `spec_frames` log-mel frames (frames_for(n) = 1 + n // HOP)."""
    share = round(clip_samples * spec_frames / clip_spec_frames)
    return min(max(share, (spec_frames - 1) * HOP), spec_frames * HOP - 1, clip_samples)


@functools.cache
def _paper() -> Geometry:
    import model  # torch and timm: loaded when the paper geometry is first asked for, not by step --help

    return Geometry.from_model(model.preset("base"))


def __getattr__(name: str):
    """`PAPER`: the paper's geometry, `Geometry.from_model(model.preset("base"))` (equal to the constants above)."""
    if name == "PAPER":
        return _paper()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _refuse(directory, what: str, found: set, expected, fix: str, geom: Geometry | None = None) -> None:
    shown = ", ".join(str(v) for v in sorted(found, key=str))
    span = geom.describe() if geom is not None else f"{CLIP_FRAMES} frames and {CLIP_SAMPLES} samples over {CLIP_S} s"
    raise UsageError(f"{directory} holds {what} {shown}, but XKD's views need {expected} ({span}); {fix}")


def check_clip_cache(reader, *, audio: bool, geom: Geometry | None = None) -> None:
    """Refuse a clip cache whose recorded fps (and, when its audio is used, sample rate) is not the views'."""
    entries = reader.entries.values()
    fps = {float(e["video"]["fps"]) for e in entries if e.get("video")}
    if fps - {float(FPS)}:
        shown = {f"{f:g} fps" for f in fps}
        _refuse(reader.directory, "clips at", shown, f"{FPS} fps", f"re-extract with --fps {FPS}", geom)
    if audio:
        check_sample_rate(reader, "audio at", f"re-extract with --sample-rate {SAMPLE_RATE}", geom)


def check_sample_rate(reader, what: str, fix: str, geom: Geometry | None = None) -> None:
    """Refuse a cache whose entries record audio at another rate than the log-mel front end's."""
    rates = {int(e["audio"]["sample_rate"]) for e in reader.entries.values() if e.get("audio")}
    if rates - {SAMPLE_RATE}:
        _refuse(reader.directory, what, {f"{r} Hz" for r in rates}, f"{SAMPLE_RATE} Hz", fix, geom)


def check_spectrogram_cache(reader, geom: Geometry | None = None) -> None:
    """Refuse a spectrogram cache made at another sample rate, hop or number of mel bands than the front end."""
    entries = list(reader.entries.values())
    check_sample_rate(
        reader,
        "log-mels of audio at",
        f"rebuild it from a clip cache extracted with --sample-rate {SAMPLE_RATE}",
        geom,
    )
    layout = {(e["spectrogram"]["hop"], e["spectrogram"]["n_mels"]) for e in entries if e.get("spectrogram")}
    if layout - {(HOP, N_MELS)}:
        _refuse(
            reader.directory,
            "log-mels with (hop, mel bands)",
            layout,
            f"hop {HOP} and {N_MELS} bands",
            "rebuild it with components.cache_spectrograms",
            geom,
        )
