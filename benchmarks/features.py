"""Evaluation feature extraction throughput: clips/s through `xkd.evaluation.features.compute` (views + frozen
encoder), per preset and modality, on the sample cache (issue 17).

    python -m benchmarks.features [--presets tiny,base] [--clips 4] [--threads 2]

One "clip" is everything the linear protocols extract for it: `train_views` augmented views + `test_clips` x
`test_crops` test views (ViewSettings defaults: 25 + 3), each through the frozen encoder (mean of the patch
tokens). The encoder is a freshly initialised one of the preset (weights do not change the cost); the views
come from data/cache/samples-av (`make run` builds it). The view building and the encoder are also timed
apart, so the row says which of the two limits extraction. Wall and CPU time (all threads) are printed.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import model as xkd_model
from xkd.data.geometry import Geometry
from xkd.evaluation import features
from xkd.evaluation.views import EvalViews, ViewSettings
from xkd.paths import REPO

CACHE = REPO / "data" / "cache" / "samples-av"


class InMemoryEncoder(features.FeatureSource):
    """The `encoder` feature source over an encoder built here rather than read from a bundle."""

    def __init__(self, encoders: dict[str, torch.nn.Module]):
        super().__init__("encoder")
        self.encoders = {m: e.eval() for m, e in encoders.items()}

    def digest(self, modality: str) -> str:  # only used for the cache key; nothing is cached here
        return f"benchmark:{modality}"


def measure(preset: str, modality: str, clips: int) -> dict:
    torch.manual_seed(0)
    net = xkd_model.build(xkd_model.preset(preset))
    encoder = (net.video_student if modality == "video" else net.audio_student).encoder
    source = InMemoryEncoder({modality: encoder})
    views = EvalViews(CACHE / "clips", CACHE / "spectrograms", Geometry.from_model(net.cfg))
    ids = [c for c in views.ids() if c in views.specs.entries][:clips]
    vs = ViewSettings()
    features.compute(source, modality, views, ids[:1], vs, None)  # warm-up
    w, c = time.perf_counter(), time.process_time()
    features.compute(source, modality, views, ids, vs, None)
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    # the view half alone (same views, no encoder), to split the total
    w2 = time.perf_counter()
    for i, cid in enumerate(ids):
        views.views(cid, modality, vs, torch.Generator().manual_seed(i))
        views.views(cid, modality, vs, None)
    view_wall = time.perf_counter() - w2
    return {
        "clips": len(ids),
        "wall": wall,
        "cpu": cpu,
        "views_wall": view_wall,
        "per_clip": vs.train_views + vs.test_clips * vs.test_crops,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,base")
    ap.add_argument("--clips", type=int, default=4, help="sample clips per measurement")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"Feature extraction (frozen encoder, {args.threads} threads, views/clip = 25 train + 3 test)")
    print(f"  {'preset':<6} {'modality':<8} {'clips/s':>8} {'views/s':>8} {'CPU s/clip':>10} {'view share':>10}")
    for preset in args.presets.split(","):
        for modality in ("video", "audio"):
            r = measure(preset, modality, args.clips)
            rate = r["clips"] / r["wall"]
            print(
                f"  {preset:<6} {modality:<8} {rate:>8.2f} {rate * r['per_clip']:>8.1f} "
                f"{r['cpu'] / r['clips']:>10.2f} {min(1.0, r['views_wall'] / r['wall']):>10.0%}"
            )
    print(f"  load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
