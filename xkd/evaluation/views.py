"""Evaluation views: `clips_per_video` uniformly spaced 4 s windows per clip, centre crop or 3 crops,
no augmentation (xkd_spec §5.1, official `mode: video`).

    EvalClips(clips_dir=..., spectrograms_dir=..., clips_per_video=3, crops=1)[i] ->
        {"clip_id", "video": float [K*crops, 3, 32, 112, 112] (ImageNet-normalised),
         "audio": float [K, 1, 80, 448], "padded_video", "padded_audio"}
Audio-only datasets (ESC-50, FSD50K) pass only `spectrograms_dir`; video-only ones get no "audio".
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from xkd.data import views
from xkd.data.cache import CacheReader
from xkd.data.photometric import IMAGENET_MEAN, IMAGENET_STD


def window_positions(k: int) -> list[float]:
    """np.linspace over the possible starts, as the official loader: K=1 takes the first window."""
    return [0.0] if k == 1 else np.linspace(0.0, 1.0, k).tolist()


def normalise(video_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, T, H, W] -> ImageNet-normalised float."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return (video_u8.float() / 255.0 - mean) / std


class EvalClips(Dataset):
    def __init__(
        self,
        clips_dir=None,
        spectrograms_dir=None,
        clips_per_video: int = 3,
        crops: int = 1,
        size: int = 112,
        with_audio: bool = True,
    ):
        if clips_dir is None and spectrograms_dir is None:
            raise ValueError("EvalClips needs a clip cache, a spectrogram cache, or both")
        if crops not in (1, 3) or clips_per_video < 1:
            raise ValueError(f"crops must be 1 or 3 and clips_per_video >= 1 (got {crops}, {clips_per_video})")
        self.clips = CacheReader(clips_dir) if clips_dir is not None else None
        self.specs = CacheReader(spectrograms_dir) if spectrograms_dir is not None and with_audio else None
        self.k, self.crops, self.size = clips_per_video, crops, size
        self.ids = self.clips.ids() if self.clips is not None else self.specs.ids()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        cid = self.ids[i]
        out = {"clip_id": cid, "padded_video": False, "padded_audio": False}
        entry = (self.clips or self.specs).entry(cid)
        frames = entry["video"]["frames"] if entry.get("video") else 0
        audio = entry.get("audio")
        has_spec = self.specs is not None and cid in self.specs.entries
        samples = audio["samples"] if audio and has_spec else None
        wins = [
            views.draw_window(
                None,
                frames,
                samples,
                entry["video"]["start_s"] if frames else 0.0,
                audio["start_s"] if audio else 0.0,
                position=p,
            )
            for p in window_positions(self.k)
        ]
        if frames:
            video, _ = self.clips.clip(cid)
            video = video.permute(0, 3, 1, 2)
            clips = []
            for w in wins:
                clip = views.window_frames(video, w.frame0)
                clips += [c.permute(1, 0, 2, 3) for c in views.centre_crops(clip, self.size, self.crops)]
            out["video"] = normalise(torch.stack(clips))
            out["padded_video"] = any(w.padded_video for w in wins)
        if has_spec:
            spec = torch.from_numpy(self.specs.spectrogram(cid))
            out["audio"] = torch.stack([views.audio_global(None, None, spec, w.sample0) for w in wins])
            out["padded_audio"] = any(w.padded_audio for w in wins)
        return out
