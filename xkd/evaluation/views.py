"""Evaluation views, the one implementation (docs/xkd_spec.md §5.1, official `mode: video`): used by `EvalClips` and
by the frozen-feature path (`xkd.evaluation.features.compute`) and fine-tuning's test views.

- test views: `test_clips` uniformly spaced windows x `test_crops` crops (centre, or left/centre/right),
  no augmentation;
- train views: `train_views` random windows; video RandomResizedCrop(train_scale), flip, colour jitter,
  grey; audio gain jitter.
The windows and the crop side are the geometry of the encoder being evaluated (`encoder_geometry`: its
bundle's model config; 4 s, 32 frames at 112 px and 448 log-mel frames in the paper); a `size` in the
settings overrides the crop side. When both streams are used (audio+video datasets) the windows are drawn
once per view from both the frames and the samples and both streams' start times, as pretraining does, so
video view i and audio view i cover the same time span.

    EvalClips(clips_dir=..., spectrograms_dir=..., clips_per_video=3, crops=1)[i] ->   (paper geometry)
        {"clip_id", "video": float [K*crops, 3, 32, 112, 112] (ImageNet-normalised),
         "audio": float [K, 1, 80, 448], "padded_video", "padded_audio"}
Audio-only datasets (ESC-50, FSD50K) pass only `spectrograms_dir`; video-only ones get no "audio".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from xkd.data import geometry as geometry_checks
from xkd.data import photometric, views
from xkd.data.cache import CacheReader
from xkd.data.geometry import PAPER, Geometry
from xkd.data.photometric import IMAGENET_MEAN, IMAGENET_STD

VIEWS_VERSION = 2  # part of the feature-cache key: bump whenever the views below change their numbers


@dataclass(frozen=True)
class ViewSettings:
    train_views: int = 25
    test_clips: int = 3
    test_crops: int = 1
    train_scale: tuple[float, float] = (0.08, 1.0)
    grey_p: float = 0.2
    gain_jitter: float = 0.1
    seed: int = 0
    size: int | None = None  # crop side; None: the encoder's input side (its geometry's `size`)

    @classmethod
    def from_settings(cls, settings: dict, **overrides) -> ViewSettings:
        """The keys of a `configs/eval/<dataset>.yaml` protocol section that name view settings."""
        known = {f.name for f in fields(cls)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in settings.items() if k in known}
        return cls(**{**values, **overrides})


def encoder_geometry(bundle=None, preset: str | None = None) -> Geometry:
    """The input geometry of the encoder being evaluated: its bundle's `config.json` (the resolved model config
    it was trained with); without a bundle (hand-made controls), the preset's, i.e. the paper geometry."""
    import model

    config = Path(bundle) / "config.json" if bundle else None
    if config is not None and config.is_file():
        return Geometry.from_model(model.from_dict(json.loads(config.read_text())))
    return Geometry.from_model(model.preset(preset or "base"))


def window_positions(k: int) -> list[float]:
    """np.linspace over the possible starts, as the official loader: K=1 takes the first window."""
    return [0.0] if k == 1 else np.linspace(0.0, 1.0, k).tolist()


def normalise(video_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, T, H, W] -> ImageNet-normalised float."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return (video_u8.float() / 255.0 - mean) / std


def _open(cache) -> CacheReader | None:
    if cache is None or isinstance(cache, CacheReader):
        return cache
    return CacheReader(Path(cache))


class EvalViews:
    """Test and train views of one clip from a clip cache, a spectrogram cache, or both (then aligned), in the
    window lengths and crop side of `geometry` (the evaluated encoder's)."""

    def __init__(self, clips=None, spectrograms=None, geometry: Geometry = PAPER):
        if clips is None and spectrograms is None:
            raise ValueError("evaluation views need a clip cache, a spectrogram cache, or both")
        self.clips, self.specs, self.geometry = _open(clips), _open(spectrograms), geometry
        if self.clips is not None:  # refused here, before any feature is computed
            geometry_checks.check_clip_cache(self.clips, audio=False, geom=geometry)
        if self.specs is not None:
            geometry_checks.check_spectrogram_cache(self.specs, geom=geometry)

    def settled(self, vs: ViewSettings) -> ViewSettings:
        """`vs` with the crop side filled in (the geometry's unless the settings name one)."""
        return vs if vs.size is not None else replace(vs, size=self.geometry.size)

    def ids(self) -> list[str]:
        return (self.clips or self.specs).ids()

    def windows(self, cid: str, g: torch.Generator | None, n: int) -> list[views.Window]:
        """`n` random windows (g) or `n` uniformly spaced ones (g None), on every stream this reader uses."""
        video = (self.clips.entries.get(cid) or {}).get("video") if self.clips is not None else None
        audio = (self.specs.entries.get(cid) or {}).get("audio") if self.specs is not None else None
        frames, samples = (video["frames"] if video else 0), (audio["samples"] if audio else None)
        kwargs = dict(
            video_start_s=video["start_s"] if video else 0.0,
            audio_start_s=audio["start_s"] if audio else 0.0,
            fps=video["fps"] if video else self.geometry.fps,
            sample_rate=audio["sample_rate"] if audio else views.SAMPLE_RATE,
            geom=self.geometry,
        )
        if g is None:
            return [views.draw_window(None, frames, samples, position=p, **kwargs) for p in window_positions(n)]
        return [views.draw_window(g, frames, samples, **kwargs) for _ in range(n)]

    def video(self, cid: str, wins: list[views.Window], vs: ViewSettings, g: torch.Generator | None) -> torch.Tensor:
        """Test: normalised [n * test_crops, 3, T, S, S]; train (g): augmented and normalised [n, 3, T, S, S]
        (T the geometry's clip frames, S the crop side)."""
        frames = self.clips.clip(cid)[0]  # [T, H, W, 3]: padded in this layout, where a copy is cheap
        out, params, size = [], [], self.settled(vs).size
        for w in wins:
            clip = views.window_frames(frames, w.frame0, self.geometry.clip_frames).permute(0, 3, 1, 2)
            if g is None:
                out += [c.permute(1, 0, 2, 3) for c in views.centre_crops(clip, size, vs.test_crops)]
                continue
            box = views.rrc_params(g, clip.shape[2], clip.shape[3], vs.train_scale)
            out.append(views.resized_crop(clip, box, size, flip=views.uniform(g, 0, 1) < 0.5))
            params.append(views.draw_photometric(g, grey_p=vs.grey_p).as_tensor())
        if g is None:
            return normalise(torch.stack(out))
        return photometric.apply(torch.stack(out), torch.stack(params))

    def audio(self, cid: str, wins: list[views.Window], vs: ViewSettings, g: torch.Generator | None) -> torch.Tensor:
        """[n, 1, 80, F]: the log-mel of each window (train: with gain jitter); F the geometry's clip_spec_frames."""
        spec = torch.from_numpy(self.specs.spectrogram(cid))
        gains = (1 - vs.gain_jitter, 1 + vs.gain_jitter)
        return torch.stack([views.audio_global(g, None, spec, w.sample0, gains, geom=self.geometry) for w in wins])

    def views(self, cid: str, modality: str, vs: ViewSettings, g: torch.Generator | None = None) -> torch.Tensor:
        """Train views (g given: the windows are drawn first, so both modalities of a clip seeded alike get
        the same windows) or test views (g None) of one modality."""
        wins = self.windows(cid, g, vs.train_views if g is not None else vs.test_clips)
        return self.video(cid, wins, vs, g) if modality == "video" else self.audio(cid, wins, vs, g)


class EvalClips(Dataset):
    """Test views of both modalities per clip, as a Dataset."""

    def __init__(
        self,
        clips_dir=None,
        spectrograms_dir=None,
        clips_per_video: int = 3,
        crops: int = 1,
        size: int | None = None,
        with_audio: bool = True,
        geometry: Geometry = PAPER,
    ):
        if clips_dir is None and spectrograms_dir is None:
            raise ValueError("EvalClips needs a clip cache, a spectrogram cache, or both")
        if crops not in (1, 3) or clips_per_video < 1:
            raise ValueError(f"crops must be 1 or 3 and clips_per_video >= 1 (got {crops}, {clips_per_video})")
        self.source = EvalViews(clips_dir, spectrograms_dir if with_audio else None, geometry)
        self.clips, self.specs = self.source.clips, self.source.specs
        self.settings = ViewSettings(test_clips=clips_per_video, test_crops=crops, size=size)
        self.ids = self.source.ids()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        cid = self.ids[i]
        out = {"clip_id": cid, "padded_video": False, "padded_audio": False}
        wins = self.source.windows(cid, None, self.settings.test_clips)
        if self.clips is not None and self.clips.entry(cid).get("video"):
            out["video"] = self.source.video(cid, wins, self.settings, None)
            out["padded_video"] = any(w.padded_video for w in wins)
        if self.specs is not None and cid in self.specs.entries:
            out["audio"] = self.source.audio(cid, wins, self.settings, None)
            out["padded_audio"] = any(w.padded_audio for w in wins)
        return out
