"""One measurement in one process, for `benchmarks.official`: the official XKD code or ours, train step or loader.

    python -m benchmarks.official_workers {official,ours}-step --threads 2 --steps 3
    python -m benchmarks.official_workers {official,ours,ours-spec}-loader --files a.mp4,b.avi --passes 2

Prints one JSON line: per-measurement seconds and the process's peak RSS. The official side imports the
checkout at $XKD_OFFICIAL (pritamqu/XKD @ 806c75d, CC-BY-NC: read from disk, never copied here) and needs
PyAV + einops from $XKD_OFFICIAL_DEPS. The shims below adapt it to today's torch / timm / torchvision; they
exist only in this benchmark process and touch none of the project's code paths.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import random
import resource
import sys
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
STEP_BATCH = 2
LR, WD, EMA, CLIP = 1e-4, 0.3, 0.997, 0.3


def official_train_dir() -> Path:
    return Path(os.environ["XKD_OFFICIAL"]).expanduser().resolve() / "codes" / "train"


def install_official_shims() -> None:
    """Make the official imports resolve on torch 2.14 / timm 1.x / torchvision 0.29 (docs/xkd_spec.md §6.3)."""
    deps = os.environ.get("XKD_OFFICIAL_DEPS") or str(Path(os.environ["XKD_OFFICIAL"]) / ".bench-deps")
    sys.path[:0] = [str(official_train_dir()), deps]

    def stub(name: str, **attrs) -> None:
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
        for k, v in attrs.items():
            setattr(sys.modules[name], k, v)

    stub("torchsummary", summary=None)  # imported, never called
    stub("torch._six", inf=math.inf)  # removed in torch 2.0

    def no_cv2(*_a, **_k):  # only the numpy-frame resize path uses it; the PIL path the loader takes does not
        raise RuntimeError("cv2 is stubbed in this benchmark")

    try:
        importlib.import_module("cv2")
    except ImportError:
        stub("cv2", INTER_LINEAR=1, INTER_NEAREST=0, resize=no_cv2)
    import timm.layers
    import timm.optim._param_groups as groups
    import torchvision.transforms._functional_pil as f_pil
    import torchvision.transforms._functional_tensor as f_t

    stub("timm.optim.optim_factory", add_weight_decay=groups.param_groups_weight_decay)  # renamed in timm 1.x
    stub("timm.models.layers", trunc_normal_=timm.layers.trunc_normal_)
    # made private in torchvision 0.17, with _get_image_* renamed and PIL resize taking only an [h, w] list
    for name, new in (("functional_tensor", f_t), ("functional_pil", f_pil)):
        old = types.ModuleType(f"torchvision.transforms.{name}")
        old.__dict__.update({k: v for k, v in vars(new).items() if not k.startswith("__")})
        old._get_image_size, old._get_image_num_channels = new.get_image_size, new.get_image_num_channels
        sys.modules[old.__name__] = old
    sys.modules["torchvision.transforms.functional_pil"].resize = _old_pil_resize
    try:
        import av.audio.resampler
    except ImportError:
        return  # the train step does not need PyAV; the loader names the missing package when it imports it
    av.audio.resampler.AudioResampler = _OneFrameResampler


def _old_pil_resize(img, size, interpolation=2):
    """torchvision 0.8's PIL resize, which the official transforms call: an int resizes the short side (aspect
    kept), a pair is (h, w)."""
    if isinstance(size, int):
        w, h = img.size
        if (w <= h and w == size) or (h <= w and h == size):
            return img
        size = (int(size * h / w), size) if w < h else (size, int(size * w / h))
    return img.resize(tuple(size)[::-1], interpolation)


class _OneFrameResampler:
    """PyAV >= 9 returns a *list* of frames from resample(); the official audio reader (written for PyAV 8)
    calls .to_ndarray() on the result, gets AttributeError, stops reading and then fails on an empty concat."""

    def __init__(self, **kwargs):
        import av

        self._resampler = av.AudioResampler(**kwargs)

    def resample(self, frame):
        import numpy as np

        arrays = [f.to_ndarray() for f in self._resampler.resample(frame)]
        joined = np.concatenate(arrays, 1) if arrays else np.zeros((1, 0), np.int16)  # s16p mono
        return types.SimpleNamespace(to_ndarray=lambda: joined)


def step_inputs(video, video_local, audio, audio_local) -> dict:
    """Random views of the paper geometry, drawn in one fixed order so both implementations get the same tensors."""
    g = torch.Generator().manual_seed(0)
    return {
        "video": torch.randn(STEP_BATCH, *video, generator=g),
        "video_local": [torch.randn(STEP_BATCH, *video_local, generator=g)],
        "audio": torch.randn(STEP_BATCH, *audio, generator=g),
        "audio_local": [torch.randn(STEP_BATCH, *audio_local, generator=g)],
    }


def official_step(steps: int) -> dict:
    import yaml

    install_official_shims()
    from models import get_model
    from optimizers import get_optimizer

    cfg = yaml.safe_load((official_train_dir() / "configs/pretext/kinetics400/xkd.yaml").read_text())
    torch.manual_seed(0)
    net = get_model(cfg["model"])
    net.init_teacher_student_same_weights()  # as the official main_xkd does after building
    net.set_teacher_no_grad()
    net.train()
    opt = get_optimizer("adamw", net, lr=LR, weight_decay=None, betas=cfg["hyperparams"]["optimizer"]["betas"])
    fwd = dict(cfg["model"]["fwd_kwargs"])
    fwd.pop("clip_grad"), fwd.pop("freeze_last_layer")
    vt, at = cfg["model"]["video_temp_kwargs"], cfg["model"]["audio_temp_kwargs"]
    fwd["teacher_temp"] = {"video": vt["warmup_teacher_temp"], "audio": at["warmup_teacher_temp"]}  # epoch 0
    fwd["student_temp"] = {"video": vt["student_temp"], "audio": at["student_temp"]}
    b = step_inputs((3, 32, 112, 112), (3, 8, 96, 96), (1, 80, 448), (1, 80, 112))
    frames, specs = [b["video"], *b["video_local"]], [b["audio"], *b["audio_local"]]

    def one() -> None:
        # main_xkd.train_one_epoch's fp32 body; its `amp.unscale_` before the clip is skipped: with amp off it
        # is called on None and crashes (docs/xkd_spec.md §6.3 4g), and it is a no-op in fp32 anyway
        for i, group in enumerate(opt.param_groups):
            group["lr"] = LR
            if i == 1:
                group["weight_decay"] = WD
        opt.zero_grad()
        loss = net(frames, specs, **fwd)["loss"]
        if not math.isfinite(loss.item()):
            raise FloatingPointError("official loss is not finite")
        loss.backward()
        net.clip_gradients(CLIP)
        net.cancel_gradients_last_layer(0, 0)
        opt.step()
        net.update_teacher(vm=EMA, am=EMA)

    return timed_steps(one, steps)


def ours_step(steps: int) -> dict:
    sys.path.insert(0, str(REPO))
    import model
    from xkd.train.engine import train_step

    torch.manual_seed(0)
    cfg = model.preset("base", "xkd")
    net = model.build(cfg)
    net.train()
    opt = model.build_optimizer(net, lr=LR, weight_decay=WD, betas=cfg.betas)
    b = step_inputs(cfg.video_input, cfg.video_local, cfg.audio_input, cfg.audio_local)

    def one() -> None:  # the project's optimiser step: forward, backward, checks, clip, AdamW, EMA
        train_step(net, opt, [b], lr=LR, weight_decay=WD, ema_momentum=EMA, clip_grad=CLIP)

    return timed_steps(one, steps)


def timed_steps(one, steps: int) -> dict:
    one()  # warm-up: first-call allocations and kernel selection
    return timed(lambda _i: one(), steps)


def official_dataset(files: list[str]):
    """The official pretraining dataset (Kinetics' VideoDataset base, whose __getitem__ Kinetics uses) over
    `files`, with the transforms the official main_xkd script builds from its xkd config."""
    import yaml

    install_official_shims()
    from datasets.augmentations import get_aud_aug, get_vid_aug
    from datasets.loader.backend_pretext.video_db import VideoDataset

    d = yaml.safe_load((official_train_dir() / "configs/pretext/kinetics400/xkd.yaml").read_text())["dataset"]
    vid = get_vid_aug(
        name=d["vid_transform"],
        crop_size=d["crop_size"],
        num_frames=d["clip_duration"] * d["video_fps"],
        mode=d["train"]["aug_mode"],
        aug_kwargs=d["train"]["vid_aug_kwargs"],
    )
    aud = get_aud_aug(
        name=d["aud_transform"],
        audio_fps=d["audio_fps"],
        n_fft=d["n_fft"],
        n_mels=d["n_mels"],
        duration=d["audio_clip_duration"],
        hop_length=d["hop_length"],
        mode=d["train"]["aug_mode"],
        aug_kwargs=d["train"]["aud_aug_kwargs"],
    )
    names = [f.lstrip("/") for f in files]  # the root is "/", so absolute paths work as the official relative names
    return VideoDataset(
        video_root="/",
        video_fns=names,
        video_clip_duration=d["clip_duration"],
        video_fps=d["video_fps"],
        video_transform=vid,
        audio_root="/",
        audio_fns=names,
        audio_clip_duration=d["audio_clip_duration"],
        audio_fps=d["audio_fps"],
        audio_fps_out=d["audio_fps_out"],
        audio_transform=aud,
        mode="clip",
    )


def official_loader(files: list[str], passes: int) -> dict:
    ds = official_dataset(files)
    random.seed(0)
    # the official __getitem__ swallows errors and returns the next file's sample; a file it cannot read would
    # be timed as two loads, so the driver only passes files that official_readable accepted
    return timed_samples(lambda i: ds[i], len(files), passes)


def official_readable(files: list[str]) -> list[str]:
    """The files the official loader turns into a sample without an exception (it skips the others silently):
    the body of its __getitem__ without the try/except."""
    ds, ok = official_dataset(files), []
    random.seed(0)
    for i, f in enumerate(files):
        try:
            video, audio = ds._load_sample(i)
            v0, v_dur, a0, a_dur = ds._sample_snippet(video, audio)
            ds._get_clip(i, video, audio, v0, a0, video_clip_duration=v_dur, audio_clip_duration=a_dur)
            ok.append(f)
        except Exception as err:
            print(f"official loader skips {f}: {type(err).__name__}: {err}", file=sys.stderr)
    return ok


def ours_loader(files: list[str], passes: int, source: str) -> dict:
    sys.path.insert(0, str(REPO))
    from xkd.data.cache import CacheReader
    from xkd.data.photometric import finish_batch
    from xkd.data.pretrain_dataset import PretrainDataset, ViewConfig, collate

    clips = REPO / "data/cache/samples-av/clips"
    by_source = {str((REPO / e["source"]).resolve()): cid for cid, e in CacheReader(clips).entries.items()}
    ids = [by_source[str(Path(f).resolve())] for f in files]
    ds = PretrainDataset(clips, REPO / "data/cache/samples-av/spectrograms", ViewConfig(audio_source=source), 0, ids)
    order = {cid: i for i, cid in enumerate(ds.ids)}
    photometric: list[tuple[float, float]] = []

    def sample(i: int):
        s = ds[(order[ids[i % len(ids)]], 1, i)]
        w, c = time.perf_counter(), time.process_time()
        finish_batch(collate([s]))  # the photometric half, on this CPU core (on the GPU in training)
        photometric.append((time.perf_counter() - w, time.process_time() - c))
        return s

    out = timed_samples(sample, len(ids), passes, exclude=photometric)
    out["photometric_cpu_seconds"] = [c for _, c in photometric]
    return out


def timed_samples(get, n: int, passes: int, exclude: list[tuple[float, float]] | None = None) -> dict:
    get(0)  # warm-up: decoder / numba / first allocations
    if exclude is not None:
        exclude.clear()
    return timed(get, n * passes, exclude)


def timed(run, count: int, exclude: list[tuple[float, float]] | None = None) -> dict:
    """Wall and CPU seconds (this process, all threads) of run(0..count-1), minus the matching `exclude` entry:
    CPU time is the figure that survives other load on a shared machine; wall time is what a user waits."""
    wall, cpu = [], []
    for i in range(count):
        w, c = time.perf_counter(), time.process_time()
        run(i)
        dw, dc = exclude[-1] if exclude else (0.0, 0.0)
        wall.append(time.perf_counter() - w - dw)
        cpu.append(time.process_time() - c - dc)
    return {"seconds": wall, "cpu_seconds": cpu, "peak_rss_gb": peak_rss_gb()}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "what", choices=("official-step", "ours-step", "official-loader", "ours-loader", "ours-spec-loader")
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--files", default="")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--check-files", action="store_true", help="print the files the official loader reads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    files = [f for f in args.files.split(",") if f]
    if args.check_files:
        print(json.dumps(official_readable(files)))
        return 0
    run = {
        "official-step": lambda: official_step(args.steps),
        "ours-step": lambda: ours_step(args.steps),
        "official-loader": lambda: official_loader(files, args.passes),
        "ours-loader": lambda: ours_loader(files, args.passes, "waveform"),
        "ours-spec-loader": lambda: ours_loader(files, args.passes, "spectrogram"),
    }[args.what]
    print(json.dumps(run()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
