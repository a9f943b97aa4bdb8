"""Frozen features for the linear protocols, computed once per (feature source, dataset, view settings) and
cached as safetensors, so an SVM C sweep or a probe's epochs never recompute them.

Feature sources (same code path, so controls are comparable):
- `encoder`: a bundle's video/audio encoder of the chosen role -> mean of the patch tokens after the
  final LayerNorm (CLS excluded), 768-d for ViT-B (docs/xkd_spec.md §5.1);
- `random-init`: the same architecture as the bundle, freshly initialised (seeded);
- `logmel-stats`: per-band mean and std of the normalised log-mel window (160-d), no network;
- `pixel-stats`: hand-made video features, no network (`pixel_stats`, 576-d): each frame of the
  (normalised) view averaged down to an 8x8 grid per colour channel, then per cell the mean and the std
  over the 32 frames and the temporal-difference energy (mean squared change between consecutive frames).
Views per sample (`xkd.evaluation.views`, the one implementation, in the evaluated encoder's geometry: 4 s clips
in the paper's): `train_views` augmented clips (video: RandomResizedCrop 0.08-1, flip, colour jitter, grey 0.2;
audio: gain U(0.9, 1.1)) and `test_clips` uniformly spaced windows x `test_crops` crops; on audio+video datasets
view i of both modalities is the same time span, and the L2-normalised video and audio features are concatenated.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import model as xkd_model
from xkd.data.geometry import PAPER, Geometry
from xkd.data.pretrain_dataset import sample_seed
from xkd.evaluation import views as eval_views
from xkd.evaluation.views import EvalViews, ViewSettings
from xkd.tracking.lineage import file_sha256

__all__ = ["EvalViews", "FeatureSource", "ViewSettings", "compute", "encoder_digest", "joint", "pixel_stats"]

HAND_MADE_VERSION = {"logmel-stats": "logmel-stats", "pixel-stats": "pixel-stats/1"}  # feature-cache keys
PIXEL_GRID = 8


def encoder_digest(path: Path) -> str:
    """sha256 over the tensors (sorted by name) and the sorted metadata of a bundle file: the file bytes
    themselves are not reproducible across processes (safetensors writes metadata in dict order)."""
    h = hashlib.sha256(json.dumps(xkd_model.read_metadata(path), sort_keys=True, default=str).encode())
    for name, tensor in sorted(load_file(str(path)).items()):
        h.update(name.encode())
        h.update(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FeatureSource:
    """Turns a batch of views of one modality into features [n, D]."""

    def __init__(self, kind: str, bundle: Path | None = None, role: str = "student", seed: int = 0):
        self.kind, self.bundle, self.role, self.seed = kind, bundle, role, seed
        self.encoders: dict[str, torch.nn.Module] = {}

    def digest(self, modality: str) -> str:
        if self.kind in HAND_MADE_VERSION:
            return HAND_MADE_VERSION[self.kind]
        path = Path(self.bundle) / f"{modality}_{self.role}.safetensors"
        return f"{self.kind}:{self.role}:{encoder_digest(path)}:{self.seed if self.kind == 'random-init' else ''}"

    def encoder(self, modality: str) -> torch.nn.Module:
        if modality not in self.encoders:
            enc = xkd_model.load_encoder(Path(self.bundle) / f"{modality}_{self.role}.safetensors")
            if self.kind == "random-init":
                torch.manual_seed(self.seed)
                enc.reset_parameters()
            self.encoders[modality] = enc.eval()
        return self.encoders[modality]

    @torch.no_grad()
    def __call__(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "logmel-stats":
            return torch.cat([x.mean(-1), x.std(-1)], -1).flatten(1)  # [n, 1, 80, T] -> [n, 160]
        if self.kind == "pixel-stats":
            return pixel_stats(x)
        return self.encoder(modality).features(x)


def pixel_stats(x: torch.Tensor) -> torch.Tensor:
    """[n, 3, T, H, W] video views -> [n, 3 * 64 * 3]: per colour channel and 8x8 grid cell, the mean and
    std over time of the cell's average, and the mean squared difference between consecutive frames
    (temporal-difference energy: what moves where)."""
    grid = F.adaptive_avg_pool3d(x.float(), (x.shape[2], PIXEL_GRID, PIXEL_GRID))  # [n, 3, T, 8, 8]
    motion = grid.diff(dim=2).pow(2).mean(2) if x.shape[2] > 1 else torch.zeros_like(grid[:, :, 0])
    return torch.cat([grid.mean(2), grid.std(2, correction=0), motion], 1).flatten(1)


def compute(
    source: FeatureSource,
    modality: str,
    source_views: EvalViews,
    clip_ids: list[str],
    vs: ViewSettings,
    cache_dir: Path | None,
    batch: int = 64,
) -> dict[str, torch.Tensor]:
    """{"train": [N, train_views, D], "test": [N, test_clips * test_crops, D]} for `clip_ids` (in order).
    `source_views` holds every cache of the dataset (clips and spectrograms), so the windows of both
    modalities are drawn from both streams and agree view by view."""
    # a rebuilt cache (either one: both shape the windows) or changed view code never reuses stale features
    manifests = [file_sha256(r.directory / "manifest.jsonl") for r in (source_views.clips, source_views.specs) if r]
    vs = source_views.settled(vs)  # the crop side the views use, so an explicit 112 and the default share a key
    parts = [source.digest(modality), modality, manifests, eval_views.VIEWS_VERSION, sorted(clip_ids), asdict(vs)]
    if source_views.geometry != PAPER:  # the paper geometry keeps the key it had before geometries existed
        parts.append(asdict(source_views.geometry))
    key = hashlib.sha256(json.dumps(parts, default=list).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"{modality}-{key}.safetensors" if cache_dir else None
    cached = _read_cached(path, clip_ids) if path is not None else None
    if cached is not None:
        return cached
    feats = {"train": [], "test": []}
    for i, cid in enumerate(tqdm(clip_ids, desc=f"{modality} features ({source.kind})", unit="clip")):
        g = torch.Generator().manual_seed(sample_seed(vs.seed, 0, i))  # the same windows for both modalities
        for split, gen in (("train", g), ("test", None)):
            x = source_views.views(cid, modality, vs, gen)
            feats[split].append(torch.cat([source(modality, x[j : j + batch]) for j in range(0, len(x), batch)]))
    out = {k: torch.stack(v).float().contiguous() for k, v in feats.items()}
    if path is not None:
        _write_cached(path, out, clip_ids)
    return out


def _read_cached(path: Path, clip_ids: list[str]) -> dict[str, torch.Tensor] | None:
    """The cached features of `clip_ids` in that order, or None when the file is absent or cannot be trusted
    (cut short, or written before the clip order lived inside it): such a file is recomputed and replaced."""
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            order = json.loads((f.metadata() or {}).get("clip_ids", "null"))
            cached = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError):
        return None
    if not isinstance(order, list) or set(cached) != {"train", "test"}:
        return None
    position = {c: i for i, c in enumerate(order)}
    if any(c not in position for c in clip_ids) or any(len(v) != len(order) for v in cached.values()):
        return None
    idx = torch.tensor([position[c] for c in clip_ids])
    return {k: v[idx] for k, v in cached.items()}


def _write_cached(path: Path, feats: dict[str, torch.Tensor], clip_ids: list[str]) -> None:
    """One file holding the features and their clip order, written under a temp name and renamed: a kill
    mid-write leaves only the temp file, which no reader looks at. The temp name is per process because
    evaluations of the same dataset share the cache and may compute the same features at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(feats, str(tmp), metadata={"clip_ids": json.dumps(clip_ids)})
    os.replace(tmp, path)
    path.with_suffix(".json").unlink(missing_ok=True)  # the separate clip index of the older layout


def joint(video: dict[str, torch.Tensor], audio: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Kinetics-Sound: [L2(video) || L2(audio)] per view (views paired by index)."""
    return {k: torch.cat([F.normalize(video[k], dim=-1), F.normalize(audio[k], dim=-1)], -1) for k in video}


def frozen_features(
    source: FeatureSource,
    clips,
    specs,
    ids: list[str],
    vs: ViewSettings,
    cache_dir: Path | None,
    geometry: Geometry = PAPER,
):
    """A dataset's features in `geometry` (the evaluated encoder's, `eval_views.encoder_geometry`): video and/or
    audio from its caches; with both, the aligned views joined per index (`joint`), the audio test views
    repeated over the video's crops."""
    views = EvalViews(clips, specs, geometry)  # both caches: aligned windows; a foreign fps/rate refused here
    feats = {}
    if clips is not None:
        feats["video"] = compute(source, "video", views, ids, vs, cache_dir)
    if specs is not None:
        feats["audio"] = compute(source, "audio", views, ids, vs, cache_dir)
    if len(feats) == 2:
        feats["audio"]["test"] = feats["audio"]["test"].repeat_interleave(vs.test_crops, 1)
        return joint(feats["video"], feats["audio"])
    return next(iter(feats.values()))
