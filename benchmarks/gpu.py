"""GPU throughput (issue 17): the bf16 train step with fused attention, its MFU, and the loader with the
photometric half on the device. Without CUDA it says so and exits 0.

    python -m benchmarks.gpu [--preset base] [--batch 32] [--steps 10]

Step: `xkd.train.engine.train_step` (forward, backward, clip, fused AdamW, EMA) under bf16 autocast; timm's
blocks call F.scaled_dot_product_attention, which dispatches to the flash / memory-efficient kernels on CUDA.
MFU = model FLOPs per step (counted once with torch.utils.flop_counter: matmuls and attention, forward and
backward) / step time / the GPU's dense bf16 peak from the table below (by device name).
Loader: `PretrainDataset.__getitem__` on one CPU core (data/cache/samples-av) and the photometric half
(`finish_batch`) on the GPU, per sample.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

# dense (no sparsity) bf16 tensor-core peaks from the vendor datasheets, TFLOP/s
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0}


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():  # the longer "H100 PCIe" is checked before "H100"
        if key in name:
            return value
    return None


def step_rows(preset: str, batch: int, steps: int) -> None:
    import model
    from xkd.train.engine import train_step

    dev = torch.device("cuda")
    cfg = model.preset(preset)
    net = model.build(cfg).to(dev)
    opt = model.build_optimizer(net, weight_decay=cfg.weight_decay, betas=cfg.betas)
    g = torch.Generator(device=dev).manual_seed(0)
    b = {
        "video": torch.randn(batch, *cfg.video_input, device=dev, generator=g),
        "video_local": [torch.randn(batch, *cfg.video_local, device=dev, generator=g)],
        "audio": torch.randn(batch, *cfg.audio_input, device=dev, generator=g),
        "audio_local": [torch.randn(batch, *cfg.audio_local, device=dev, generator=g)],
    }

    def bf16():
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def one():
        train_step(net, opt, [b], lr=1e-4, weight_decay=0.05, ema_momentum=0.997, clip_grad=0.3, autocast=bf16)

    from torch.utils.flop_counter import FlopCounterMode

    one()  # warm-up
    with FlopCounterMode(display=False) as counter:
        one()
    flops = counter.get_total_flops()
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        one()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    peak = peak_tflops(torch.cuda.get_device_name())
    mfu = f"{100 * flops / med / (peak * 1e12):.1f} %" if peak else "n/a (GPU not in the peak table)"
    print(
        f"train step ({preset}, batch {batch}, bf16, fused SDPA): min {min(times) * 1000:.0f} ms, median "
        f"{med * 1000:.0f} ms = {batch / med:.0f} clips/s; {flops / 1e12:.2f} TFLOP/step -> "
        f"{flops / med / 1e12:.0f} TFLOP/s, MFU {mfu} (peak {peak} TFLOP/s); "
        f"max memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    )


def loader_row(samples: int) -> None:
    from xkd.data.photometric import finish_batch
    from xkd.data.pretrain_dataset import PretrainDataset, ViewConfig, collate
    from xkd.paths import REPO

    cache = REPO / "data" / "cache" / "samples-av"
    if not (cache / "clips" / "manifest.jsonl").exists():
        print(f"loader: skipped, {cache} is missing (run `make run` first)")
        return
    torch.set_num_threads(1)
    ds = PretrainDataset(cache / "clips", cache / "spectrograms", ViewConfig(audio_source="spectrogram"))
    finish_batch(collate([ds[(0, 0, 0)]]), "cuda")  # warm-up (CUDA context, kernels)
    cpu, gpu = [], []
    for i in range(samples):
        t = time.perf_counter()
        s = collate([ds[(i % len(ds), 1, i)]])
        t1 = time.perf_counter()
        out = finish_batch(s, "cuda")
        torch.cuda.synchronize()
        cpu.append(t1 - t)
        gpu.append(time.perf_counter() - t1)
        del out
    c, g = statistics.median(cpu), statistics.median(gpu)
    print(
        f"loader: {1 / c:.0f} samples/s per CPU core (views from cached spectrograms, median {c * 1000:.1f} ms); "
        f"photometric half on the GPU {g * 1000:.2f} ms/sample incl. the host-to-device copy"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="base", choices=("tiny", "base"))
    ap.add_argument("--batch", type=int, default=32, help="clips per step (the paper: 32 per GPU)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--samples", type=int, default=60, help="loader samples timed")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: skipped")
        return 0
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    step_rows(args.preset, args.batch, args.steps)
    loader_row(args.samples)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
