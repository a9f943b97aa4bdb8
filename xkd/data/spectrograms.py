"""Whole-track normalised log-mel entries for a spectrogram cache, from a clip cache's audio or from media files.

Called per input by `xkd.data.cache_build.build_cache` from the `components.cache_spectrograms` step. Stored as
float16 [80, T]: see that step's docstring for the precision argument.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xkd.data.cache import PCM_SCALE, CacheReader
from xkd.data.cache_build import Job
from xkd.data.geometry import check_sample_rate
from xkd.data.logmel import HOP, N_MELS, SAMPLE_RATE, log_mel
from xkd.data.media import (
    MediaError,
    check_declared_length,
    check_decoded_length,
    decode,
    expected_seconds,
    probe,
    truncated_to,
)
from xkd.data.shards import array_bytes, bytes_array, read_member

STORAGE_DTYPE = np.float16


def spectrogram_entry(pcm16: np.ndarray, params: dict, audio_meta: dict) -> tuple[dict, dict[str, bytes]]:
    # a clip cache's audio was checked against its declared length at extraction: only --min-duration here
    check_decoded_length(
        "audio", len(pcm16) / SAMPLE_RATE, None, min_duration_s=params["min_duration_s"], min_fraction=0
    )
    import torch

    torch.set_num_threads(1)
    spec = log_mel(pcm16.astype(np.float32) / PCM_SCALE).numpy()
    fields = {
        "audio": audio_meta,
        "video": None,
        "spectrogram": {
            "n_mels": N_MELS,
            "frames": int(spec.shape[1]),
            "hop": HOP,
            "dtype": np.dtype(STORAGE_DTYPE).name,
        },
    }
    return fields, {"logmel.npy": array_bytes(spec.astype(STORAGE_DTYPE))}


def from_clip_cache(job: Job, params: dict) -> tuple[dict, dict[str, bytes]]:
    p = job.payload
    if "shard_path" not in p:
        raise MediaError("no_audio", "the clip cache holds no audio for this clip (its source has no audio stream)")
    pcm = bytes_array(read_member(Path(p["shard_path"]), p["offset"], p["size"]))
    fields, members = spectrogram_entry(pcm, params, p["audio"])
    return {"duration_s": p["duration_s"], "truncated_to_s": p.get("truncated_to_s"), **fields}, members


def from_audio_file(job: Job, params: dict) -> tuple[dict, dict[str, bytes]]:
    """Probe, decode the chosen audio stream (at most --max-duration s), check its length with the same rule as
    clip extraction, then compute the log-mel. `duration_s` is the decoded length, never the header's claim."""
    info = probe(job.path, params["timeout_s"])
    if info.audio is None:
        raise MediaError("no_audio", "no audio stream")
    check_declared_length(info, params["min_duration_s"])
    cap = params["max_duration_s"]
    dec = decode(
        job.path,
        info,
        fps=None,
        short_side=0,
        sample_rate=SAMPLE_RATE,
        with_video=False,
        with_audio=True,
        timeout_s=params["timeout_s"],
        max_duration_s=cap,
    )
    seconds = len(dec.audio) / SAMPLE_RATE
    check_decoded_length(
        "audio",
        seconds,
        expected_seconds(info, info.audio, cap),
        min_duration_s=params["min_duration_s"],
        min_fraction=params["min_decoded_fraction"],
    )
    meta = {
        "sample_rate": SAMPLE_RATE,
        "samples": int(len(dec.audio)),
        "start_s": info.audio.start_s,
        "codec": info.audio.codec,
        "encoding": "logmel",
        "stream_index": info.audio.index,
    }
    fields, members = spectrogram_entry(dec.audio, params, meta)
    return {"duration_s": round(seconds, 6), "truncated_to_s": truncated_to(info, cap), **fields}, members


def clip_cache_jobs(clips: str) -> list[Job]:
    """One job per clip-cache entry; clips without audio become `no_audio` rejects here."""
    reader = CacheReader(clips)
    # the front end's mel filters and hop are defined at 16 kHz: other audio would give wrong log-mels
    check_sample_rate(reader, "audio at", f"re-extract with --sample-rate {SAMPLE_RATE}")
    jobs = []
    for cid, e in reader.entries.items():
        audio = e.get("audio")
        where = e["members"].get("pcm16.npy")
        payload = {"duration_s": e["duration_s"], "truncated_to_s": e.get("truncated_to_s"), "audio": audio}
        if where is not None:
            payload.update(shard_path=str(reader.directory / e["shard"]), **where)
        fingerprint = {"clip_shard": e["shard"], **(where or {}), "upstream": e.get("fingerprint")}
        jobs.append(Job(source=e["source"], path=e["source"], clip_id=cid, fingerprint=fingerprint, payload=payload))
    return jobs
