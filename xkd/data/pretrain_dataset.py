"""The pretraining dataset: XKD's global and local views of both modalities, read from the caches.

Map-style over the clip cache (members are read by offset, so any clip is one seek + one read away;
that keeps full per-epoch shuffling across shards without shuffle buffers). `EpochSampler` deals the
clip order to ranks and yields keys `(clip index, epoch, position)`; every random number of a sample
comes from a generator seeded by (seed, epoch, position), so views depend neither on the number of
workers nor on which worker draws them, different ranks/positions get different views, and a resumed
run (`EpochSampler.start`) sees exactly the views an uninterrupted one would have.

Per sample (uint8 video, float audio; the photometric half runs after collation, see photometric.py), in the
sizes of `ViewConfig.geometry` (the model config's, `xkd.data.geometry.Geometry`; the paper's in brackets):
    video        uint8 [3, clip_frames, size, size] ([3, 32, 112, 112]) + video_aug [12]
    video_local  list of uint8 [3, local_frames, local_size, local_size] ([3, 8, 96, 96]; L views)
                 + video_local_aug list of [12]
    audio        float [1, 80, clip_spec_frames] ([1, 80, 448])
    audio_local  list of float [1, 80, local_spec_frames] ([1, 80, 112])
    padded_video / padded_audio  bool (short clips are padded, never skipped: see views.py)
    skipped      bool (an unreadable clip when on_unreadable="skip": collate drops it and counts it)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from xkd.data import geometry, views
from xkd.data.cache import CacheReader
from xkd.data.geometry import PAPER, Geometry
from xkd.data.photometric import apply as apply_photometric


@dataclass(frozen=True)
class ViewConfig:
    video_local_views: int = 1  # 1 for XKD, 3 for MAS/MATS
    audio_local_views: int = 1  # always 1 in the official configs
    audio_source: str = "waveform"  # "waveform": exact (gain before the log-mel, reflect edges);
    # "spectrogram": slice the cached log-mel (faster, see README)
    blur_sigma: str = "official"  # "official" fixed (0.1, 2.0) | "sampled" isotropic U(0.1, 2)
    photometric_on: str = "device"  # "device": after collation (finish_batch) | "loader": here
    on_unreadable: str = "raise"  # "raise" names the clip | "skip": dropped by collate and counted
    geometry: Geometry = PAPER  # window lengths and crop sides: from the model config (from_config)
    global_scale: tuple[float, float] = (0.2, 1.0)
    local_scale: tuple[float, float] = (0.08, 0.4)
    grey_p: float = 0.2
    blur_p: float = 0.5
    align_local_views: bool = False  # True: audio local view i starts with video local view i (default: independent)

    @classmethod
    def from_config(cls, cfg) -> ViewConfig:
        """The views a pretraining config asks for (`xkd.train.config.PretrainConfig`): the one place that maps
        config keys to view settings, so pretraining and checkpoint selection can never see different views."""
        return cls(
            video_local_views=cfg.model.video_local_views,
            audio_local_views=cfg.model.audio_local_views,
            audio_source=cfg.data.audio_source,
            blur_sigma=cfg.data.blur_sigma,
            on_unreadable=cfg.data.on_unreadable,
            align_local_views=cfg.model.align_local_views,
            geometry=Geometry.from_model(cfg.model),
            global_scale=tuple(cfg.data.global_scale),
            local_scale=tuple(cfg.data.local_scale),
        )

    def __post_init__(self):
        checks = {
            "audio_source": ("waveform", "spectrogram"),
            "blur_sigma": ("official", "sampled"),
            "photometric_on": ("device", "loader"),
            "on_unreadable": ("raise", "skip"),
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"ViewConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A well-mixed 63-bit seed per (seed, epoch, position)."""
    hi, lo = np.random.SeedSequence([seed, epoch, position]).generate_state(2)
    return ((int(hi) << 32) | int(lo)) & (2**63 - 1)


class UnreadableClip(RuntimeError):
    pass


class PretrainDataset(Dataset):
    def __init__(
        self,
        clips_dir,
        spectrograms_dir=None,
        config: ViewConfig = ViewConfig(),
        seed: int = 0,
        clip_ids: list[str] | None = None,
    ):
        """`clip_ids` restricts the dataset to those clips (e.g. the training part of a hold-out split)."""
        self.config, self.seed = config, seed
        self.clips = CacheReader(clips_dir)
        self.specs = CacheReader(spectrograms_dir) if config.audio_source == "spectrogram" else None
        # a cache at another fps / sample rate is refused here, not deep in a worker
        geometry.check_clip_cache(self.clips, audio=self.specs is None, geom=config.geometry)
        if self.specs is not None:
            geometry.check_spectrogram_cache(self.specs, geom=config.geometry)
        usable, self.excluded = [], {"no_audio": [], "no_spectrogram": []}
        wanted = set(clip_ids) if clip_ids is not None else None
        for cid, entry in self.clips.entries.items():
            if wanted is not None and cid not in wanted:
                continue
            if entry.get("audio") is None:
                self.excluded["no_audio"].append(cid)
            elif self.specs is not None and cid not in self.specs.entries:
                self.excluded["no_spectrogram"].append(cid)
            else:
                usable.append(cid)
        if not usable:
            raise ValueError(
                f"no clip in {clips_dir} has both video and audio "
                f"({len(self.excluded['no_audio'])} without audio); nothing to pretrain on"
            )
        self.ids = usable

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key) -> dict:
        index, epoch, position = key if isinstance(key, tuple) else (key, 0, key)
        cid = self.ids[index]
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, position))
        try:
            return self._views(cid, g)
        except Exception as err:  # a damaged shard or member: name it, or count it and go on
            if self.config.on_unreadable == "skip":
                return {"skipped": True, "clip_id": cid, "error": f"{type(err).__name__}: {err}"}
            raise UnreadableClip(
                f"clip {cid!r} (shard {self.clips.entry(cid)['shard']} in "
                f"{self.clips.directory}) could not be read: {err}"
            ) from err

    def _views(self, cid: str, g: torch.Generator) -> dict:
        cfg, entry = self.config, self.clips.entry(cid)
        geom = cfg.geometry
        wave = spec = None
        if self.specs is None:
            wave = torch.from_numpy(self.clips.audio(cid))
            samples = len(wave)
        else:
            spec = torch.from_numpy(self.specs.spectrogram(cid))
            samples = entry["audio"]["samples"]
        fps, rate = entry["video"]["fps"], entry["audio"]["sample_rate"]  # as recorded (checked at construction)
        win = views.draw_window(
            g,
            entry["video"]["frames"],
            samples,
            entry["video"]["start_s"],
            entry["audio"]["start_s"],
            fps=fps,
            sample_rate=rate,
            geom=geom,
        )
        frames, _ = self.clips.clip(cid, frames=slice(win.frame0, win.frame0 + geom.clip_frames))
        clip = views.window_frames(frames, 0, geom.clip_frames).permute(0, 3, 1, 2)  # [T, 3, H, W] uint8, interleaved
        _, _, h, w = clip.shape

        box = views.rrc_params(g, h, w, cfg.global_scale)
        video = views.resized_crop(clip, box, geom.size, flip=views.uniform(g, 0, 1) < 0.5)
        video_aug = views.draw_photometric(g, blur_sigma=cfg.blur_sigma)
        locals_, local_augs, local_starts = [], [], []
        for _ in range(cfg.video_local_views):
            start = views.randint(g, 0, geom.clip_frames - geom.local_frames)
            local_starts.append(start)
            part = clip[start : start + geom.local_frames]
            box = views.rrc_params(g, h, w, cfg.local_scale)
            locals_.append(views.resized_crop(part, box, geom.local_size, flip=views.uniform(g, 0, 1) < 0.5))
            local_augs.append(
                views.draw_photometric(g, grey_p=cfg.grey_p, blur_p=cfg.blur_p, blur_sigma=cfg.blur_sigma)
            )

        sample = {
            "video": video,  # [3, T, S, S]
            "video_aug": video_aug.as_tensor(),
            "video_local": locals_,  # each [3, t, s, s]
            "video_local_aug": [a.as_tensor() for a in local_augs],
            "audio": views.audio_global(g, wave, spec, win.sample0, geom=geom),
            "audio_local": [
                views.audio_local(
                    g, wave, spec, win.sample0, start=self._aligned(local_starts, i, win, fps, rate), geom=geom
                )
                for i in range(cfg.audio_local_views)
            ],
            "padded_video": win.padded_video,
            "padded_audio": win.padded_audio,
            "skipped": False,
        }
        if cfg.photometric_on == "loader":
            sample["video"] = apply_photometric(sample["video"][None], sample.pop("video_aug")[None])[0]
            sample["video_local"] = [
                apply_photometric(v[None], a[None])[0]
                for v, a in zip(sample["video_local"], sample.pop("video_local_aug"))
            ]
        return sample

    def _aligned(self, local_starts: list[int], i: int, win: views.Window, fps: float, rate: int) -> int | None:
        """align_local_views: the first sample of video local view i's time (the cache's fps and sample
        rate convert frames to samples); None (drawn independently, official) otherwise."""
        if not self.config.align_local_views or i >= len(local_starts):
            return None
        return win.sample0 + round(local_starts[i] * rate / fps)


def collate(samples: list[dict]) -> dict:
    """default_collate over readable samples; `skipped` counts the unreadable ones that were dropped."""
    good = [s for s in samples if not s["skipped"]]
    batch = default_collate([{k: v for k, v in s.items() if k != "skipped"} for s in good]) if good else {}
    batch["skipped"] = len(samples) - len(good)
    return batch


class EpochSampler(Sampler):
    """Distributed, resumable clip order. Each epoch: a permutation seeded by (seed, epoch), padded by
    repeating its first elements to a multiple of `num_replicas` (so every rank has exactly
    ceil(n / num_replicas) samples, hence the same number of batches), rank r takes positions
    r, r + R, r + 2R, ... Yields (clip index, epoch, global position); `start` skips the first
    samples of this rank's epoch (resume mid-epoch)."""

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        self.n, self.num_replicas, self.rank, self.seed, self.shuffle = n, num_replicas, rank, seed, shuffle
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(n / num_replicas)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        total = self.per_rank * self.num_replicas
        return (perm * math.ceil(total / self.n))[:total]

    def __iter__(self):
        order = self.order()
        for pos in range(self.rank + self.start * self.num_replicas, len(order), self.num_replicas):
            yield order[pos], self.epoch, pos

    def __len__(self) -> int:
        return self.per_rank - self.start
