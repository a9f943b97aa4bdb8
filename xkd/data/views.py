"""XKD input views from cached clips (docs/xkd_spec.md §1.1-§1.3), as tensor ops with an explicit generator.

Geometry (window, crops, flips, audio crops) runs in the loader; the photometric part of the video
augmentation (colour jitter in random order, grey, blur) and the normalisation run batched after
collation (`xkd.data.photometric`), from parameters drawn here per clip. So every random number of a
sample comes from one `torch.Generator`, seeded per (seed, epoch, sample position): the same seed gives
the same views on any number of workers, and an interrupted run resumes exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# the paper constants stay importable from here (benchmarks); the views themselves read a Geometry
from xkd.data.geometry import CLIP_FRAMES, CLIP_S, CLIP_SAMPLES, FPS, LOCAL_FRAMES, LOCAL_SAMPLES, PAPER, Geometry  # noqa: F401
from xkd.data.logmel import HOP, LOG_EPS, NORM_MEAN, NORM_STD, SAMPLE_RATE, frames_for, log_mel

SILENCE = (math.log(LOG_EPS) - NORM_MEAN) / NORM_STD  # log-mel of zeros


def uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def randint(g: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=g).item())


# --- temporal window -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    frame0: int  # first video frame of the window (cache frame index)
    sample0: int  # first audio sample of the same window, aligned to the sample
    padded_video: bool  # the clip has fewer than geom.clip_frames frames: the last frame is repeated
    padded_audio: bool  # the audio is shorter than the window from sample0: zeros are appended


def draw_window(
    g: torch.Generator | None,
    frames: int,
    samples: int | None,
    video_start_s: float = 0.0,
    audio_start_s: float = 0.0,
    position: float | None = None,
    fps: float = FPS,
    sample_rate: int = SAMPLE_RATE,
    geom: Geometry = PAPER,
) -> Window:
    """The official t0 rule (§1.1): t0 uniform over the span where both windows (4 s in the paper) fit, the
    audio window starting at the video window's t0. t0 lives on the frame grid of the cache, so the audio
    start is exact to the sample. A stream shorter than the window starts at 0 and the other is drawn on its
    own. `position` in [0, 1] replaces the random draw (evaluation: uniformly spaced windows). `fps` and
    `sample_rate` are what the cache recorded (its manifest entry); readers refuse caches whose rates
    are not the views' (`xkd.data.geometry`), so geom.clip_frames and geom.clip_samples span the same time."""
    clip_frames, clip_samples = geom.clip_frames, geom.clip_samples

    def pick(low: int, high: int) -> int:
        if high <= low:
            return low
        if position is not None:
            return low + round(position * (high - low))
        return randint(g, low, high)

    v_ok = frames >= clip_frames
    a_ok = samples is not None and samples >= clip_samples
    if v_ok and a_ok:
        offset = audio_start_s - video_start_s  # the audio stream starts this much later
        lo = max(0, math.ceil(offset * fps))  # t0 must lie inside the audio stream
        hi = min(frames - clip_frames, math.floor((offset * sample_rate + samples - clip_samples) * fps / sample_rate))
        if hi >= lo:
            frame0 = pick(lo, hi)
            sample0 = round((frame0 / fps - offset) * sample_rate)
            return Window(frame0, min(max(sample0, 0), samples - clip_samples), False, False)
    # no common span: each stream on its own, a short one from its start (and padded)
    frame0 = pick(0, frames - clip_frames) if v_ok else 0
    sample0 = pick(0, samples - clip_samples) if a_ok else 0
    return Window(frame0, sample0, not v_ok, samples is not None and not a_ok)


def window_frames(video: torch.Tensor, frame0: int, n: int) -> torch.Tensor:
    """n frames from frame0; a clip that is too short repeats its last frame (counted by the caller)."""
    clip = video[frame0 : frame0 + n]
    if len(clip) < n:
        clip = torch.cat([clip, clip[-1:].expand(n - len(clip), *clip.shape[1:])])
    return clip


# --- video geometry (uint8 [T, 3, H, W]) ------------------------------------------------------------


def rrc_params(
    g: torch.Generator, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop parameter rule (10 tries, then a centre crop), drawn from `g`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * uniform(g, *scale)
        aspect = math.exp(uniform(g, *log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return randint(g, 0, height - h), randint(g, 0, width - w), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(frames: torch.Tensor, box: tuple[int, int, int, int], size: int, flip: bool) -> torch.Tensor:
    """Crop every frame of [T, 3, H, W] uint8 to `box`, resize to size^2 (bilinear, antialiased like PIL), mirror
    left-right if `flip`; returns the model's layout [3, T, size, size], contiguous."""
    top, left, h, w = box
    crop = frames[:, :, top : top + h, left : left + w].contiguous(memory_format=torch.channels_last)
    # uint8 in, uint8 out: torch's SIMD path for antialiased bilinear (3-4x faster than via float); it works on
    # channels-last frames (pixels interleaved), so frames from the cache are kept interleaved until here
    out = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return channels_first(out, flip)


def channels_first(frames: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """[T, C, H, W] (any memory layout) -> contiguous [C, T, H, W], mirrored along W if `flip`, in one copy.

    Done in numpy: torch's strided copy de-interleaves 3-channel uint8 about 4x slower, and a torch flip would be
    a second copy."""
    thwc = frames.permute(0, 2, 3, 1).numpy()
    if flip:
        thwc = thwc[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(thwc.transpose(3, 0, 1, 2)))


def centre_crops(frames: torch.Tensor, size: int, crops: int) -> list[torch.Tensor]:
    """Evaluation crops of [T, 3, H, W]: short side resized to `size`, then the centre crop (crops=1) or
    left/centre/right along the long side (crops=3)."""
    _, _, h, w = frames.shape
    if min(h, w) != size:
        scale = size / min(h, w)
        frames = F.interpolate(
            frames.contiguous(memory_format=torch.channels_last),
            size=(max(size, round(h * scale)), max(size, round(w * scale))),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        ).contiguous()
        _, _, h, w = frames.shape
    if crops == 1:
        starts = [((h - size) // 2, (w - size) // 2)]
    elif crops == 3:
        long_h = h > w
        n = (h if long_h else w) - size
        starts = [((s, (w - size) // 2) if long_h else ((h - size) // 2, s)) for s in (0, n // 2, n)]
    else:
        raise ValueError(f"crops must be 1 or 3, got {crops}")
    return [frames[:, :, t : t + size, l : l + size] for t, l in starts]


@dataclass(frozen=True)
class Photometric:
    """Per-clip colour parameters, applied after collation by xkd.data.photometric."""

    brightness: float
    contrast: float
    saturation: float
    hue: float
    order: tuple[int, int, int, int]
    grey: bool
    blur: bool
    blur_sigma: tuple[float, float]  # (sigma_x, sigma_y)

    def as_tensor(self) -> torch.Tensor:
        """[12] float: b, c, s, h, order(4), grey, blur, sigma_x, sigma_y (collates into [B, 12])."""
        return torch.tensor(
            [
                self.brightness,
                self.contrast,
                self.saturation,
                self.hue,
                *self.order,
                float(self.grey),
                float(self.blur),
                *self.blur_sigma,
            ]
        )


def draw_photometric(
    g: torch.Generator,
    *,
    jitter=(0.4, 0.4, 0.4, 0.2),
    grey_p: float = 0.0,
    blur_p: float = 0.0,
    blur_sigma: str = "official",
) -> Photometric:
    """ColorJitter(0.4, 0.4, 0.4, 0.2) always applied, its four ops in a random order; RandomGray and a
    Gaussian blur with probabilities. The official blur is fixed at (sigma_x, sigma_y) = (0.1, 2.0)
    (docs/xkd_spec.md §9); `blur_sigma="sampled"` draws one isotropic sigma in [0.1, 2.0] as DINO does."""
    b, c, s, h = jitter
    order = tuple(int(i) for i in torch.randperm(4, generator=g))
    factors = (uniform(g, 1 - b, 1 + b), uniform(g, 1 - c, 1 + c), uniform(g, 1 - s, 1 + s), uniform(g, -h, h))
    grey = uniform(g, 0, 1) < grey_p
    blur = uniform(g, 0, 1) < blur_p
    if blur_sigma == "official":
        sigma = (0.1, 2.0)
    else:
        iso = uniform(g, 0.1, 2.0)
        sigma = (iso, iso)
    return Photometric(*factors, order=order, grey=grey, blur=blur, blur_sigma=sigma)


# --- audio --------------------------------------------------------------------------------------


def audio_window(wave: torch.Tensor, sample0: int, n: int) -> torch.Tensor:
    seg = wave[sample0 : sample0 + n]
    return F.pad(seg, (0, n - len(seg))) if len(seg) < n else seg


def spec_window(spec: torch.Tensor, sample0: int, n: int) -> torch.Tensor:
    """Slice the cached whole-track log-mel at the frame nearest to sample0 (hop 143: within 71 samples);
    past the end, pad with the log-mel of silence (what zero samples give)."""
    first = round(sample0 / HOP)
    frames = frames_for(n)
    seg = spec[:, first : first + frames]
    if seg.shape[1] < frames:
        seg = F.pad(seg, (0, frames - seg.shape[1]), value=SILENCE)
    return seg


def volume_shift(gain: float) -> float:
    """Volume jitter on a normalised log-mel: ln(g^2 mel + eps) ~= ln(mel + eps) + ln(g^2) while mel >> eps."""
    return 2.0 * math.log(gain) / NORM_STD


def byol_rrc(spec: torch.Tensor, g: torch.Generator, scale=(0.6, 1.5), virtual_time_scale: float = 1.5) -> torch.Tensor:
    """BYOL-A random resize crop of [80, T]: a zero canvas (80, 1.5 T) with the spectrogram centred, a
    crop of (U(scale)·80 clipped to 80) x (U(scale)·T clipped to the canvas) at a random place,
    resized back bicubically (align_corners=True). Zero is the mean level in normalised units."""
    f, t = spec.shape
    canvas_w = int(t * virtual_time_scale)
    canvas = spec.new_zeros(f, canvas_w)
    x0 = (canvas_w - t) // 2
    canvas[:, x0 : x0 + t] = spec
    h = min(max(int(uniform(g, *scale) * f), 1), f)
    w = min(max(int(uniform(g, *scale) * t), 1), canvas_w)
    i = randint(g, 0, f - h) if f > h else 0
    j = randint(g, 0, canvas_w - w) if canvas_w > w else 0
    crop = canvas[i : i + h, j : j + w][None, None]
    return F.interpolate(crop, size=(f, t), mode="bicubic", align_corners=True)[0, 0]


def audio_global(
    g: torch.Generator | None,
    wave: torch.Tensor | None,
    spec: torch.Tensor | None,
    sample0: int,
    gain_range=(0.9, 1.1),
    geom: Geometry = PAPER,
) -> torch.Tensor:
    """[1, 80, geom.clip_spec_frames] (448 in the paper): from the waveform (exact: gain before the log-mel) or
    from the cached spectrogram (the gain as an additive shift)."""
    gain = uniform(g, *gain_range) if g is not None else 1.0
    if wave is not None:
        return log_mel(audio_window(wave, sample0, geom.clip_samples) * gain)[None]
    return (spec_window(spec, sample0, geom.clip_samples) + volume_shift(gain))[None]


def audio_local(
    g: torch.Generator,
    wave: torch.Tensor | None,
    spec: torch.Tensor | None,
    sample0: int,
    gain_range=(0.8, 1.2),
    start: int | None = None,
    geom: Geometry = PAPER,
) -> torch.Tensor:
    """[1, 80, geom.local_spec_frames] (1 s = 112 in the paper) at a random multiple of 100 samples inside the
    global window (official: not time-aligned with the video local view), or from `start` (align_local_views),
    volume jitter, BYOL-A random resize crop."""
    if start is None:
        start = sample0 + 100 * randint(g, 0, (geom.clip_samples - geom.local_samples) // 100)
    gain = uniform(g, *gain_range)
    if wave is not None:
        spec1 = log_mel(audio_window(wave, start, geom.local_samples) * gain)
    else:
        spec1 = spec_window(spec, start, geom.local_samples) + volume_shift(gain)
    return byol_rrc(spec1, g)[None]
