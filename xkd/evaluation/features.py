"""Frozen features for the linear protocols, computed once per (feature source, dataset, view settings) and
cached as safetensors, so an SVM C sweep or a probe's epochs never recompute them.

Feature sources (same code path, so controls are comparable):
- `encoder`: a bundle's video/audio encoder of the chosen role -> mean of the patch tokens after the
  final LayerNorm (CLS excluded), 768-d for ViT-B (xkd_spec §5.1);
- `random-init`: the same architecture as the bundle, freshly initialised (seeded);
- `logmel-stats`: per-band mean and std of the normalised log-mel window (160-d), no network.
Views per sample: `train_views` augmented 4 s clips (video: RandomResizedCrop 0.08-1, flip, colour jitter,
grey 0.2; audio: random 4 s window, gain U(0.9, 1.1)) and `test_clips` uniformly spaced windows x
`test_crops` crops. Audio+video datasets concatenate the L2-normalised video and audio features.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import model as xkd_model
from xkd.data import photometric, views
from xkd.data.cache import CacheReader
from xkd.data.pretrain_dataset import sample_seed
from xkd.evaluation.views import normalise, window_positions
from xkd.tracking.lineage import file_sha256


@dataclass(frozen=True)
class ViewSettings:
    train_views: int = 25
    test_clips: int = 3
    test_crops: int = 1
    train_scale: tuple[float, float] = (0.08, 1.0)
    grey_p: float = 0.2
    gain_jitter: float = 0.1
    seed: int = 0


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
        if self.kind == "logmel-stats":
            return "logmel-stats"
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
        return self.encoder(modality).features(x)


def video_views(reader: CacheReader, cid: str, vs: ViewSettings, g: torch.Generator | None) -> torch.Tensor:
    entry = reader.entry(cid)
    frames, _ = reader.clip(cid)
    frames = frames.permute(0, 3, 1, 2)
    n = entry["video"]["frames"]
    out = []
    if g is None:
        for p in window_positions(vs.test_clips):
            clip = views.window_frames(frames, views.draw_window(None, n, None, position=p).frame0)
            out += [c.permute(1, 0, 2, 3) for c in views.centre_crops(clip, 112, vs.test_crops)]
        return normalise(torch.stack(out))
    params = []
    for _ in range(vs.train_views):
        clip = views.window_frames(frames, views.draw_window(g, n, None).frame0)
        box = views.rrc_params(g, clip.shape[2], clip.shape[3], vs.train_scale)
        out.append(views.resized_crop(clip, box, 112, flip=views.uniform(g, 0, 1) < 0.5).permute(1, 0, 2, 3))
        params.append(views.draw_photometric(g, grey_p=vs.grey_p).as_tensor())
    return photometric.apply(torch.stack(out), torch.stack(params))


def audio_views(reader: CacheReader, cid: str, vs: ViewSettings, g: torch.Generator | None) -> torch.Tensor:
    spec = torch.from_numpy(reader.spectrogram(cid))
    samples = reader.entry(cid)["audio"]["samples"]
    if g is None:
        wins = [views.draw_window(None, 0, samples, position=p) for p in window_positions(vs.test_clips)]
        return torch.stack([views.audio_global(None, None, spec, w.sample0) for w in wins])
    gains = (1 - vs.gain_jitter, 1 + vs.gain_jitter)
    return torch.stack(
        [
            views.audio_global(g, None, spec, views.draw_window(g, 0, samples).sample0, gains)
            for _ in range(vs.train_views)
        ]
    )


def compute(
    source: FeatureSource,
    modality: str,
    reader: CacheReader,
    clip_ids: list[str],
    vs: ViewSettings,
    cache_dir: Path | None,
    batch: int = 64,
) -> dict[str, torch.Tensor]:
    """{"train": [N, train_views, D], "test": [N, test_clips * test_crops, D]} for `clip_ids` (in order)."""
    manifest = file_sha256(reader.directory / "manifest.jsonl")  # a rebuilt cache never reuses stale features
    key = hashlib.sha256(
        json.dumps([source.digest(modality), modality, manifest, sorted(clip_ids), asdict(vs)], default=list).encode()
    ).hexdigest()[:20]
    path = Path(cache_dir) / f"{modality}-{key}.safetensors" if cache_dir else None
    if path is not None and path.exists():
        cached = load_file(str(path))
        position = {c: i for i, c in enumerate(json.loads(path.with_suffix(".json").read_text()))}
        idx = torch.tensor([position[c] for c in clip_ids])
        return {k: v[idx] for k, v in cached.items()}
    make = video_views if modality == "video" else audio_views
    feats = {"train": [], "test": []}
    for i, cid in enumerate(tqdm(clip_ids, desc=f"{modality} features ({source.kind})", unit="clip")):
        g = torch.Generator().manual_seed(sample_seed(vs.seed, 0, i))
        for split, gen in (("train", g), ("test", None)):
            x = make(reader, cid, vs, gen)
            feats[split].append(torch.cat([source(modality, x[j : j + batch]) for j in range(0, len(x), batch)]))
    out = {k: torch.stack(v).float().contiguous() for k, v in feats.items()}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(out, str(path))
        path.with_suffix(".json").write_text(json.dumps(clip_ids))
    return out


def joint(video: dict[str, torch.Tensor], audio: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Kinetics-Sound: [L2(video) || L2(audio)] per view (views paired by index)."""
    return {k: torch.cat([F.normalize(video[k], dim=-1), F.normalize(audio[k], dim=-1)], -1) for k in video}
