"""Readers for cache directories (clips or spectrograms): what other steps and tests use.

    read_clip(cache_dir, clip_id)        -> (uint8 frames [T, H, W, 3] torch tensor, fps)
    read_audio(cache_dir, clip_id)       -> float32 waveform [n] at the cache's sample rate (16 kHz)
    read_spectrogram(cache_dir, clip_id) -> float32 normalised log-mel [80, T]

`CacheReader` keeps the manifest in memory; the module functions reuse one reader per directory and
reload it when the manifest file changes.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from xkd.data.cache_build import MANIFEST, read_manifest, read_report
from xkd.data.shards import bytes_array, checked_shard, read_member, unpack_jpegs

PCM_SCALE = 32767.0  # the official loader divides int16 samples by 32767


class CacheReader:
    def __init__(self, cache_dir: str | Path):
        self.directory = Path(cache_dir)
        if not (self.directory / MANIFEST).exists():
            raise FileNotFoundError(
                f"{self.directory} is not a cache directory (no {MANIFEST}); "
                "run components.extract_clips / components.cache_spectrograms first"
            )
        self.entries = {e["clip_id"]: e for e in read_manifest(self.directory)}
        # Every shard path must stay inside the cache (or a partition a merged cache records): a crafted
        # manifest must not make a reader open arbitrary files. Checked once here, so every user is covered.
        roots = tuple(p.get("dir") for p in read_report(self.directory).get("partitions") or [] if isinstance(p, dict))
        for clip_id, e in self.entries.items():
            checked_shard(self.directory, e.get("shard"), clip_id, roots)

    def ids(self) -> list[str]:
        return list(self.entries)

    def entry(self, clip_id: str) -> dict:
        try:
            return self.entries[clip_id]
        except KeyError:
            raise KeyError(f"clip {clip_id!r} is not in {self.directory / MANIFEST}") from None

    def member(self, clip_id: str, name: str) -> bytes:
        entry = self.entry(clip_id)
        where = entry["members"].get(name)
        if where is None:
            raise KeyError(f"clip {clip_id!r} has no {name!r} in {self.directory} (has: {sorted(entry['members'])})")
        return read_member(self.directory / entry["shard"], where["offset"], where["size"])

    def jpegs(self, clip_id: str) -> list[memoryview]:
        return unpack_jpegs(self.member(clip_id, "frames"))

    def clip(self, clip_id: str, frames: slice | None = None) -> tuple[torch.Tensor, float]:
        """Decoded RGB frames [T, H, W, 3] uint8 (optionally only `frames`, decoding just those)."""
        from torchvision.io import decode_jpeg

        jpegs = self.jpegs(clip_id)
        if frames is not None:
            jpegs = jpegs[frames]
        data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
        decoded = decode_jpeg(data) if data else []
        fps = float(self.entry(clip_id)["video"]["fps"])
        if not decoded:
            return torch.empty(0, 0, 0, 3, dtype=torch.uint8), fps
        # decode_jpeg returns CHW views of HWC buffers: stacking them as HWC is a plain copy, where stacking
        # the CHW views de-interleaves every pixel (~15x slower, the loader's largest cost before)
        return torch.stack([d.permute(1, 2, 0) for d in decoded]), fps

    def audio(self, clip_id: str) -> np.ndarray:
        pcm = bytes_array(self.member(clip_id, "pcm16.npy"))
        return pcm.astype(np.float32) / PCM_SCALE

    def spectrogram(self, clip_id: str) -> np.ndarray:
        return bytes_array(self.member(clip_id, "logmel.npy")).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _reader(directory: str, manifest_mtime_ns: int) -> CacheReader:
    return CacheReader(directory)


def open_cache(cache_dir: str | Path) -> CacheReader:
    directory = Path(cache_dir).resolve()
    manifest = directory / MANIFEST
    return _reader(str(directory), manifest.stat().st_mtime_ns if manifest.exists() else -1)


def read_clip(cache_dir: str | Path, clip_id: str) -> tuple[torch.Tensor, float]:
    return open_cache(cache_dir).clip(clip_id)


def read_audio(cache_dir: str | Path, clip_id: str) -> np.ndarray:
    return open_cache(cache_dir).audio(clip_id)


def read_spectrogram(cache_dir: str | Path, clip_id: str) -> np.ndarray:
    return open_cache(cache_dir).spectrogram(clip_id)
