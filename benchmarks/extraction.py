"""Clip extraction throughput on data/samples/av against a naive baseline, measured in the same run.

    python -m benchmarks.extraction [--input data/samples/av] [--repeats 3]

Ours: components.extract_clips (one ffmpeg pass per file for video+audio, frames JPEG-compressed into
tar shards). Baseline: what a straightforward script does - ffprobe, then one ffmpeg call for the video
writing one JPEG file per frame, and a second ffmpeg call for the audio (WAV). Both run on one worker
(one core), so the figures are per core; both use the same fps / short side / sample rate.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from components.extract_clips import run
from xkd.data.cache_build import read_report
from xkd.data.geometry import FPS, VIDEO_SIZE
from xkd.data.inputs import media_jobs
from xkd.data.logmel import SAMPLE_RATE
from xkd.data.media import probe, scaled_size


def naive_extract(files: list[str], out: Path) -> None:
    for i, f in enumerate(files):
        info = probe(f, 60)
        w, h = scaled_size(info.video.width, info.video.height, VIDEO_SIZE)
        frames = out / f"{i:04d}"
        frames.mkdir()
        subprocess.run(
            [
                "ffmpeg",
                "-nostdin",
                "-v",
                "error",
                "-threads",
                "1",
                "-i",
                f,
                "-map",
                "0:v:0",
                "-vf",
                f"fps={FPS},scale={w}:{h}",
                "-q:v",
                "2",
                str(frames / "%05d.jpg"),
            ],
            check=True,
        )
        if info.audio is not None:
            subprocess.run(
                [
                    "ffmpeg",
                    "-nostdin",
                    "-v",
                    "error",
                    "-threads",
                    "1",
                    "-i",
                    f,
                    "-map",
                    "0:a:0",
                    "-ac",
                    "1",
                    "-ar",
                    str(SAMPLE_RATE),
                    str(out / f"{i:04d}.wav"),
                ],
                check=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", default="data/samples/av")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    jobs, _ = media_jobs(args.input)
    files = [j.path for j in jobs]
    ours, naive = [], []
    media_s = bytes_per_s = None
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            run(args.input, str(Path(tmp) / "cache"), workers=1)
            ours.append(time.perf_counter() - t)
            report = read_report(Path(tmp) / "cache")
            media_s, bytes_per_s = report["media_seconds"], report["bytes_per_media_second"]
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            naive_extract(files, Path(tmp))
            naive.append(time.perf_counter() - t)
    o, n = min(ours), min(naive)
    print(f"files: {len(files)}  media: {media_s:.1f} s  (best of {args.repeats}, 1 worker = 1 core)")
    print(
        f"ours     : {o:6.2f} s  {len(files) / o:6.2f} clips/s  {media_s / o:7.1f} media-s/s/core  "
        f"cache {bytes_per_s / 1024:.1f} KiB per clip-second"
    )
    print(
        f"baseline : {n:6.2f} s  {len(files) / n:6.2f} clips/s  {media_s / n:7.1f} media-s/s/core  "
        "(separate ffmpeg calls for video and audio, one JPEG file per frame)"
    )
    print(f"speed-up ours/baseline: {n / o:.2f}x")


if __name__ == "__main__":
    main()
