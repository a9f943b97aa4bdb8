"""Photometric half of the pretraining input per sample on one CPU thread (issue 17): xkd.data.photometric
against the implementation it replaced (the reference copy in tests/test_photometric.py), same batches,
interleaved rounds.

    python -m benchmarks.photometric [--batch 8] [--rounds 5]

A sample = the global view [3, 32, 112, 112] + one local view [3, 8, 96, 96] (XKD) of real frames (the
sample videos in data/samples/av, decoded at 8 fps, short side 112, random resized crops as in pretraining),
with parameters drawn by views.draw_photometric as in pretraining (jitter always, local grey 0.2, blur 0.5).
Both run through `apply` on whole collated batches, as finish_batch does. CPU time (time.process_time) is the
figure to trust on a shared machine; wall time is printed next to it. Target: new <= 10 ms/sample.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tests.test_photometric import reference_apply
from xkd.data import photometric, views
from xkd.data.geometry import FPS, LOCAL_SIZE, VIDEO_SIZE
from xkd.data.media import decode, probe
from xkd.paths import REPO

SAMPLES = REPO / "data" / "samples" / "av"


def real_frames(limit: int) -> list[torch.Tensor]:
    """Up to `limit` real clips, uint8 [32, 3, H, W] (short side 112), the first 4 s of each sample video."""
    clips = []
    for path in sorted(SAMPLES.iterdir()):
        if len(clips) == limit:
            break
        info = probe(path, 60)
        if info.video is None:
            continue
        dec = decode(
            path,
            info,
            fps=FPS,
            short_side=VIDEO_SIZE,
            sample_rate=16000,
            with_video=True,
            with_audio=False,
            timeout_s=60,
            max_duration_s=views.CLIP_S,
        )
        clips.append(views.window_frames(torch.from_numpy(dec.frames).permute(0, 3, 1, 2), 0, views.CLIP_FRAMES))
    return clips


def batch_of_views(clips: list[torch.Tensor], size: int, g: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(uint8 video [B, 3, T, S, S], params [B, 12])] for the global and the local view, as collated."""
    glob, loc, glob_p, loc_p = [], [], [], []
    for i in range(size):
        clip = clips[i % len(clips)]
        _, _, h, w = clip.shape
        box = views.rrc_params(g, h, w, (0.2, 1.0))
        glob.append(views.resized_crop(clip, box, VIDEO_SIZE, flip=False))
        glob_p.append(views.draw_photometric(g).as_tensor())
        start = views.randint(g, 0, views.CLIP_FRAMES - views.LOCAL_FRAMES)
        box = views.rrc_params(g, h, w, (0.08, 0.4))
        part = clip[start : start + views.LOCAL_FRAMES]
        loc.append(views.resized_crop(part, box, LOCAL_SIZE, flip=False))
        loc_p.append(views.draw_photometric(g, grey_p=0.2, blur_p=0.5).as_tensor())
    return [(torch.stack(glob).contiguous(), torch.stack(glob_p)), (torch.stack(loc).contiguous(), torch.stack(loc_p))]


def timed(fn, batch) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for video, params in batch:
        fn(video, params)
    return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8, help="samples per batch (per-sample figures are divided)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds, old then new, each on a new batch")
    args = ap.parse_args()
    if args.rounds < 3:
        raise SystemExit("--rounds must be at least 3 (min and median of the rounds)")
    torch.set_num_threads(1)
    clips = real_frames(args.batch)
    g = torch.Generator().manual_seed(0)
    batches = [batch_of_views(clips, args.batch, g) for _ in range(args.rounds)]
    worst = max(float((photometric.apply(v, p) - reference_apply(v, p)).abs().max()) for b in batches for v, p in b)
    timed(reference_apply, batches[0]), timed(photometric.apply, batches[0])  # warm-up (allocator, kernels)

    times = {"old": [], "new": []}
    for batch in batches:
        times["old"].append(timed(reference_apply, batch))
        times["new"].append(timed(photometric.apply, batch))

    def per_sample_ms(name: str, k: int) -> tuple[float, float]:
        vals = [1000 * t[k] / args.batch for t in times[name]]
        return min(vals), statistics.median(vals)

    print(
        f"{len(clips)} real clips (data/samples/av), batches of {args.batch} samples "
        f"(global 3x32x112x112 + local 3x8x96x96), {args.rounds} interleaved rounds, 1 thread"
    )
    for name, label in (("old", "old (reference, tests/test_photometric.py)"), ("new", "new (xkd.data.photometric)")):
        (cmin, cmed), (wmin, wmed) = per_sample_ms(name, 0), per_sample_ms(name, 1)
        print(f"{label:44s} CPU ms/sample min {cmin:7.2f} median {cmed:7.2f} | wall min {wmin:7.2f} median {wmed:7.2f}")
    (ocmin, ocmed), (ncmin, ncmed) = per_sample_ms("old", 0), per_sample_ms("new", 0)
    (owmin, owmed), (nwmin, nwmed) = per_sample_ms("old", 1), per_sample_ms("new", 1)
    print(
        f"speed-up old/new: CPU {ocmin / ncmin:.1f}x (min) {ocmed / ncmed:.1f}x (median), "
        f"wall {owmin / nwmin:.1f}x (min) {owmed / nwmed:.1f}x (median); target new <= 10 ms/sample CPU"
    )
    print(f"max |new - old| after normalisation: {worst:.2e}")


if __name__ == "__main__":
    main()
