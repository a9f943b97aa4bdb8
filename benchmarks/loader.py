"""Pretraining input throughput per core: our cache-based views against the official-style path,
measured in the same run on the same real sample clips (the six with audio in data/samples/av).

    python -m benchmarks.loader [--clips-dir data/cache/samples-av/clips] [--rounds 5]

Official-style baseline (docs/xkd_spec.md §1, §9: ~6.5 clips/s/core measured with the official code): per clip,
decode a 4 s window of the raw file at native resolution (ffmpeg, seeking like PyAV), then per-frame PIL
transforms (short-side resize to 112, RandomResizedCrop, flip, ColorJitter in random order; the local view
adds grey and blur), ToTensor + Normalize; audio decoded to 16 kHz, librosa log-mel for the 4 s global and
the 1 s local view, BYOL-A crop. Ours: `PretrainDataset.__getitem__` (read + JPEG decode + crops + audio
views) with the photometric ops run batched after collation, reported separately (on the GPU in training).
Everything single-threaded: figures are per core. Needs `make run` (or the DVC stages) to have built the cache.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import ColorJitter, RandomResizedCrop

from benchmarks.spectrograms import librosa_front_end
from xkd.data import views
from xkd.data.cache import PCM_SCALE, CacheReader
from xkd.data.geometry import LOCAL_SIZE, VIDEO_SIZE
from xkd.data.media import probe
from xkd.data.photometric import IMAGENET_MEAN, IMAGENET_STD, finish_batch
from xkd.data.pretrain_dataset import PretrainDataset, ViewConfig, collate

MEAN, STD = list(IMAGENET_MEAN), list(IMAGENET_STD)
OFFICIAL_RECORDED = 6.5  # clips/s/core, the official loader on four real clips (docs/xkd_spec.md §9)


def _pil_view(frames: list[Image.Image], size: int, scale, local: bool) -> torch.Tensor:
    i, j, h, w = RandomResizedCrop.get_params(frames[0], scale, (3 / 4, 4 / 3))
    flip = random.random() < 0.5
    order, b, c, s, hue = ColorJitter.get_params((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.2, 0.2))
    grey, blur = local and random.random() < 0.2, local and random.random() < 0.5
    out = []
    for f in frames:
        f = TF.resized_crop(f, i, j, h, w, [size, size])
        f = TF.hflip(f) if flip else f
        for op in order:
            f = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue][op](
                f, [b, c, s, hue][op]
            )
        f = TF.rgb_to_grayscale(f, 3) if grey else f
        f = TF.gaussian_blur(f, [9, 9], [0.1, 2.0]) if blur else f
        out.append(TF.normalize(TF.to_tensor(f), MEAN, STD))
    return torch.stack(out, 1)


def official_style(path: str) -> dict:
    info = probe(path, 60)
    t0 = random.uniform(0, max(0.0, info.duration_s - views.CLIP_S))
    # decode the 4 s window at native size (one pass; the official code seeks with PyAV)
    dec = decode_window(path, info, t0)
    frames = [Image.fromarray(f) for f in dec.frames[: views.CLIP_FRAMES]]
    frames = [TF.resize(f, VIDEO_SIZE) for f in frames]
    video = _pil_view(frames, VIDEO_SIZE, (0.2, 1.0), local=False)
    start = random.randint(0, views.CLIP_FRAMES - views.LOCAL_FRAMES)
    local = _pil_view(frames[start : start + views.LOCAL_FRAMES], LOCAL_SIZE, (0.08, 0.4), local=True)
    wave = np.zeros(views.CLIP_SAMPLES, np.float32)
    audio = dec.audio[: views.CLIP_SAMPLES].astype(np.float32) / PCM_SCALE
    wave[: len(audio)] = audio
    glob = librosa_front_end(wave * random.uniform(0.9, 1.1))
    s0 = 100 * random.randint(0, (views.CLIP_SAMPLES - views.LOCAL_SAMPLES) // 100)
    loc = librosa_front_end(wave[s0 : s0 + views.LOCAL_SAMPLES] * random.uniform(0.8, 1.2))
    loc = views.byol_rrc(torch.from_numpy(loc), torch.Generator().manual_seed(s0))
    return {"video": video, "video_local": local, "audio": glob, "audio_local": loc}


def decode_window(path, info, t0):
    """The 4 s window only (seek like PyAV), native-size RGB frames at 8 fps + 16 kHz mono audio, one pass."""
    import subprocess
    import tempfile

    import ffmpeg

    from xkd.data.media import Decoded

    inp = ffmpeg.input(path, ss=t0, t=views.CLIP_S, threads=1)
    with tempfile.NamedTemporaryFile(suffix=".s16le") as audio_file:
        v = ffmpeg.output(
            inp[str(info.video.index)].filter("fps", fps=views.FPS), "pipe:", format="rawvideo", pix_fmt="rgb24"
        )
        a = ffmpeg.output(inp[str(info.audio.index)], audio_file.name, format="s16le", ac=1, ar=views.SAMPLE_RATE)
        cmd = ffmpeg.merge_outputs(v, a).global_args("-nostdin", "-v", "error", "-y").compile()
        raw = subprocess.run(cmd, capture_output=True, check=True).stdout
        audio = np.fromfile(audio_file.name, dtype="<i2")
    w, h = info.video.width, info.video.height
    frames = np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)
    if len(frames) < views.CLIP_FRAMES:
        frames = np.concatenate([frames, np.repeat(frames[-1:], views.CLIP_FRAMES - len(frames), 0)])
    return Decoded(frames=frames, audio=audio)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips-dir", default="data/cache/samples-av/clips")
    ap.add_argument("--spectrograms-dir", default="data/cache/samples-av/spectrograms")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    random.seed(0)
    reader = CacheReader(args.clips_dir)
    sources = [e["source"] for e in reader.entries.values() if e["audio"]]

    official_style(sources[0])  # warm-up (librosa/numba, PIL)
    t = time.perf_counter()
    for _ in range(max(1, args.rounds // 2)):
        for src in sources:
            official_style(src)
    n_off = len(sources) * max(1, args.rounds // 2)
    off_rate = n_off / (time.perf_counter() - t)

    print(f"clips: {len(sources)} real clips with audio, 1 thread (per core)")
    print(
        f"official-style path (raw decode + per-frame PIL + librosa): {off_rate:7.1f} clips/s/core "
        f"(the official code measured {OFFICIAL_RECORDED:.1f} on this machine kind, docs/xkd_spec.md §9)"
    )
    for source in ("waveform", "spectrogram"):
        ds = PretrainDataset(args.clips_dir, args.spectrograms_dir, ViewConfig(audio_source=source))
        ds[(0, 0, 0)]
        split = {"read": 0.0, "decode": 0.0}
        t = time.perf_counter()
        samples = []
        for r in range(args.rounds):
            for i in range(len(ds)):
                samples.append(ds[(i, 1, r * len(ds) + i)])
        total = time.perf_counter() - t
        n = args.rounds * len(ds)
        for cid in ds.ids:  # the read and JPEG-decode share of the work above
            t = time.perf_counter()
            ds.clips.jpegs(cid)
            ds.clips.audio(cid)
            split["read"] += time.perf_counter() - t
            t = time.perf_counter()
            ds.clips.clip(cid, frames=slice(0, 32))
            split["decode"] += time.perf_counter() - t
        read_ms, dec_ms = (1000 * split[k] / len(ds.ids) for k in ("read", "decode"))
        per_clip = 1000 * total / n
        batch = collate(samples[: len(ds)])
        t = time.perf_counter()
        finish_batch(batch)
        photo_ms = 1000 * (time.perf_counter() - t) / len(ds)
        rate = 1000 / per_clip
        print(
            f"ours, audio from {source:11s}: {rate:7.1f} clips/s/core on loader cores = "
            f"{rate / off_rate:5.1f}x in-run baseline, {rate / OFFICIAL_RECORDED:4.1f}x recorded  "
            f"(per clip: read {read_ms:.1f} ms, JPEG decode {dec_ms:.1f} ms, "
            f"crops+audio views {per_clip - read_ms - dec_ms:.1f} ms)"
        )
        print(
            f"   photometric ops after collation on this CPU: {photo_ms:.1f} ms/clip "
            f"(with them on loader cores: {1000 / (per_clip + photo_ms):.1f} clips/s/core = "
            f"{1000 / (per_clip + photo_ms) / off_rate:.1f}x)"
        )
    assumed_step_s, per_gpu = 0.5, 32
    need = per_gpu / assumed_step_s
    print(
        f"H100 estimate: assuming a base XKD step of {assumed_step_s} s at {per_gpu} clips/GPU (bf16, not "
        f"measured here), one GPU consumes {need:.0f} clips/s -> {need / rate:.1f} loader cores "
        f"(photometric on the GPU)"
    )


if __name__ == "__main__":
    main()
