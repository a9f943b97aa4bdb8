"""How far the fast audio path (slicing the cached float16 whole-track log-mel, volume jitter as an
additive shift) is from recomputing the official front end on the exact waveform window.

    python -m benchmarks.audio_fidelity [--clips-dir ...] [--spectrograms-dir ...]

Prints, over every 4 s / 1 s window start on the hop grid of the real sample audio:
1. volume jitter: log_mel(g * x) vs log_mel(x) + ln(g^2)/4.41 for g at the jitter range ends;
2. slicing: cached whole-track spectrogram[:, j : j + F] vs log_mel(x[143 j : 143 j + n]), split into the
   edge frames (the centred STFT's window reaches past the slice: reflect padding vs real neighbours)
   and the interior (only float16 storage differs).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from xkd.data.cache import CacheReader
from xkd.data.geometry import CLIP_SAMPLES, LOCAL_SAMPLES
from xkd.data.logmel import HOP, SAMPLE_RATE, frames_for, log_mel
from xkd.data.views import volume_shift

EDGE = 4  # frames whose 1024-sample window reaches outside the slice: ceil(512 / 143)


def measure(clips_dir: str, specs_dir: str, stride: int = 7) -> dict:
    clips, specs = CacheReader(clips_dir), CacheReader(specs_dir)
    jitter = {g: [] for g in (0.8, 0.9, 1.1, 1.2)}
    edge, interior = {LOCAL_SAMPLES: [], CLIP_SAMPLES: []}, {LOCAL_SAMPLES: [], CLIP_SAMPLES: []}
    for cid in specs.ids():
        wave = torch.from_numpy(clips.audio(cid))
        cached = torch.from_numpy(specs.spectrogram(cid))
        for n in (CLIP_SAMPLES, LOCAL_SAMPLES):
            frames = frames_for(n)
            for j in range(0, (len(wave) - n) // HOP, stride):
                exact = log_mel(wave[HOP * j : HOP * j + n])
                diff = (cached[:, j : j + frames] - exact).abs()
                edge[n].append(torch.cat([diff[:, :EDGE], diff[:, -EDGE:]], 1).max().item())
                interior[n].append(diff[:, EDGE:-EDGE].max().item())
                if n == CLIP_SAMPLES and j % (stride * 10) == 0:
                    for g in jitter:
                        jitter[g].append((log_mel(wave[HOP * j : HOP * j + n] * g) - exact - volume_shift(g)).abs())
    return {
        "jitter": {g: torch.cat([d.flatten() for d in v]) for g, v in jitter.items()},
        "edge": edge,
        "interior": interior,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips-dir", default="data/cache/samples-av/clips")
    ap.add_argument("--spectrograms-dir", default="data/cache/samples-av/spectrograms")
    args = ap.parse_args()
    torch.set_num_threads(1)
    m = measure(args.clips_dir, args.spectrograms_dir)
    print(
        "normalised log-mel units (1 unit = 4.41 nats); the jitter itself moves values by up to "
        f"{volume_shift(1.2):.3f} (g = 1.2)"
    )
    for g, d in m["jitter"].items():
        print(
            f"volume jitter g={g}: additive shift vs exact: max {d.max():.2e}, mean {d.mean():.2e}, "
            f"99.9th pct {d.quantile(0.999):.2e}"
        )
    for n in (CLIP_SAMPLES, LOCAL_SAMPLES):
        e, i = np.array(m["edge"][n]), np.array(m["interior"][n])
        print(
            f"{n // SAMPLE_RATE} s slice vs recompute ({len(e)} windows): edge {EDGE}+{EDGE} frames max {e.max():.3f} "
            f"(median {np.median(e):.3f}); interior max {i.max():.2e} (float16 storage)"
        )


if __name__ == "__main__":
    main()
