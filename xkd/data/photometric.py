"""Batched photometric video augmentation + normalisation, on any device (CPU loader or the GPU).

Input: uint8 clips [B, 3, T, H, W] and per-clip parameters [B, 12] drawn in the loader
(`views.Photometric.as_tensor`). Per clip, in this order (the official local/global transform):
ColorJitter's four ops in the clip's own random order -> RandomGray -> Gaussian blur -> /255 and
ImageNet normalisation. Every frame of a clip gets the same parameters. The ops follow torchvision's
tensor semantics (clamp to [0, 1] after each op; contrast against the per-frame grey mean); unlike the
PIL path of the official code there is no rounding to uint8 between ops.

Speed (issue 17, benchmarks/photometric.py): each clip is processed on its own, a chunk of frames at a
time, in place in the output buffer with reused scratch planes, its parameters as Python scalars: no
gather/scatter of sub-batches, no [B]-shaped broadcasts, no fresh temporaries. The hue rotation is
torchvision's HSV one without the HSV round trip: a hue shift keeps each pixel's max and min, so only the
hexagonal hue is computed and each channel is read off a trapezoid of it (`_hue`). The output equals the
previous per-op implementation to float rounding, a few 1e-6 after normalisation (tests/test_photometric.py
keeps that implementation as its reference).
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_WEIGHTS = (0.2989, 0.587, 0.114)
BLUR_KERNEL = 9  # 96 // 20 * 2 + 1 (official, for the 96 px local view)
BLUR_TAIL = 1e-12  # kernel taps whose total weight is below this are dropped (sigma 0.1: the whole x pass)
CPU_CHUNK_FRAMES = 16  # frames per pass on a CPU (tuned with benchmarks/photometric.py)
_HUE_CENTRES = (0.0, 2.0, 4.0)  # hexagonal hue (in sextants) where R, G, B is the largest channel


# Every op below works in place on frames of one clip, x = [3, T, H, W] float in [0, 1], with a scalar factor
# and ws = six [T, H, W] scratch planes.


def _grey_into(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Luma of [3, ...] into out [...] (torchvision's weights)."""
    torch.mul(x[0], GREY_WEIGHTS[0], out=out)
    out.add_(x[1], alpha=GREY_WEIGHTS[1])
    return out.add_(x[2], alpha=GREY_WEIGHTS[2])


def _brightness(x: torch.Tensor, f: float, ws: torch.Tensor) -> None:
    x.mul_(f)
    if not 0 <= f <= 1:  # else 0 <= f * x <= x <= 1 (rounding is monotonic): the clamp would change nothing
        x.clamp_(0, 1)


def _contrast(x: torch.Tensor, f: float, ws: torch.Tensor) -> None:
    # against the mean grey of each frame, as torchvision per image; mean of luma = luma of channel means
    bias = (_constant("grey", GREY_WEIGHTS, x) @ x.flatten(2).mean(-1)).mul_(1 - f)  # [T]: (1 - f) * grey mean
    torch.add(bias.view(-1, 1, 1), x, alpha=f, out=x).clamp_(0, 1)


def _saturation(x: torch.Tensor, f: float, ws: torch.Tensor) -> None:
    grey = ws[0]  # (1 - f) * luma
    torch.mul(x[0], (1 - f) * GREY_WEIGHTS[0], out=grey)
    grey.add_(x[1], alpha=(1 - f) * GREY_WEIGHTS[1]).add_(x[2], alpha=(1 - f) * GREY_WEIGHTS[2])
    torch.add(grey, x, alpha=f, out=x).clamp_(0, 1)


def _hue(x: torch.Tensor, f: float, ws: torch.Tensor) -> None:
    """torchvision's adjust_hue (RGB -> HSV, h += f mod 1, HSV -> RGB) without the round trip.

    With y the hue in sextants (0 = red, 2 = green, 4 = blue), lo/hi the smallest/largest channel and
    d = hi - lo, HSV -> RGB is channel_c = lo + d * clamp(2 - circular_distance(y, centre_c), 0, 1), and
    the shift keeps lo and hi. y is taken in [-3, 3] without branching on the largest channel: with
    u = (r - lo) / d and q = (g - b) / d, |y| = 3 - |q| + u * (2|q| - 3) and y has the sign of q
    (checked sextant by sextant: red largest u = 1, |y| = |q|; red in the middle |q| = 1, |y| = 2 - u;
    red smallest u = 0, |y| = 3 - |q|).
    """
    r, g, b = x
    hi, lo, d, u, q, e = ws
    torch.maximum(r, g, out=hi)
    torch.maximum(hi, b, out=hi)
    torch.minimum(r, g, out=lo)
    torch.minimum(lo, b, out=lo)
    torch.sub(hi, lo, out=d)
    inv = torch.clamp_min(d, 1e-30, out=hi).reciprocal_()  # d = 0 (grey pixel): numerators 0, any hue gives lo
    torch.sub(r, lo, out=u).mul_(inv)
    torch.sub(g, b, out=q)
    w = torch.abs(q, out=e).mul_(inv)  # |q|
    y = torch.add(w, u, alpha=3, out=inv).addcmul_(u, w, value=-2)  # 3 - |y| = |q| + 3u - 2u|q|
    y.sub_(3).copysign_(q)
    # a_c = y + shift - centre_c, moved by a multiple of 6 into [-6, 6] where ||a| - 3| = 3 - circular distance
    shift = 6.0 * f
    offsets = [(c - shift) - 6.0 * round((c - shift) / 6.0) for c in _HUE_CENTRES]  # y spans [-3, 3] around 0
    for channel, offset in zip(x, offsets):  # scalars: no small host-to-device copy (and sync) on a GPU
        torch.sub(y, offset, out=channel)
    x.abs_().sub_(3).abs_().clamp_(1, 2)  # 1 + clamp(2 - circular distance, 0, 1)
    torch.addcmul(lo.sub_(d), d, x, out=x)  # lo - d + d * (1 + trapezoid)


OPS = (_brightness, _contrast, _saturation, _hue)  # index = position in the parameter vector


def _gaussian_taps(sigma: float) -> list[float]:
    """The normalised 9-tap Gaussian (torchvision's), cut to the radius that keeps all but BLUR_TAIL of it."""
    half = (BLUR_KERNEL - 1) / 2
    pdf = [math.exp(-0.5 * ((i - half) / sigma) ** 2) for i in range(BLUR_KERNEL)]
    taps = [p / sum(pdf) for p in pdf]
    radius = int(half)
    while radius > 0 and 2 * sum(taps[: int(half) - radius + 1]) < BLUR_TAIL:
        radius -= 1
    return taps[int(half) - radius : int(half) + radius + 1]


def _blur_axis(x: torch.Tensor, taps: list[float], dim: int) -> None:
    """In-place 1-D convolution of [3, T, H, W] along H (dim=-2) or W (dim=-1), reflect padding."""
    radius = len(taps) // 2
    if radius == 0:
        return  # identity to within BLUR_TAIL
    n = x.shape[dim]
    planes = x.reshape(-1, *x.shape[-2:])
    pad = (0, 0, radius, radius) if dim == -2 else (radius, radius, 0, 0)
    padded = F.pad(planes, pad, mode="reflect")
    out = planes if planes.data_ptr() == x.data_ptr() and planes.is_contiguous() else torch.empty_like(planes)
    torch.mul(padded.narrow(dim, 0, n), taps[0], out=out)
    for j in range(1, len(taps)):
        out.add_(padded.narrow(dim, j, n), alpha=taps[j])
    if out.data_ptr() != x.data_ptr():
        x.copy_(out.view_as(x))


_scratch = threading.local()


def _workspace(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Six [frames, H, W] scratch planes for chunks shaped like x [3, <=frames, H, W], kept per thread and shape
    (about 5 MB for the global view): a fresh multi-MB CPU buffer is page-faulted in 4 KiB at a time on first
    touch, which cost ~8x the op that filled it (torch.maximum into a new vs a reused 1.6 MB plane)."""
    cache = _scratch.__dict__.setdefault("buffers", {})
    key = (x.device, x.dtype, frames, *x.shape[2:])
    if key not in cache:
        cache[key] = torch.empty((6, frames, *x.shape[2:]), dtype=x.dtype, device=x.device)
    return cache[key][:, : x.shape[1]]


def _constant(name: str, values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """A small constant on like's device, made once per thread: building it per clip would be a host-to-device
    copy, and a stream sync, per clip on a GPU."""
    cache = _scratch.__dict__.setdefault("constants", {})
    key = (name, like.device, like.dtype)
    if key not in cache:
        cache[key] = torch.tensor(values, dtype=like.dtype, device=like.device)
    return cache[key]


def _frames(x: torch.Tensor, p: list[float], ws: torch.Tensor) -> None:
    """All photometric ops of some frames of one clip, in place; p = the clip's 12 parameters."""
    for op in p[4:8]:
        OPS[int(op)](x, p[int(op)], ws)
    if p[8] > 0.5:
        x.copy_(_grey_into(x, ws[0]).expand_as(x))
    if p[9] > 0.5:
        _blur_axis(x, _gaussian_taps(p[10]), dim=-1)
        _blur_axis(x, _gaussian_taps(p[11]), dim=-2)


def apply(video: torch.Tensor, params: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """uint8 [B, 3, T, H, W] + params [B, 12] -> float32 views (normalised unless normalize=False)."""
    x = torch.empty(video.shape, dtype=torch.float32, device=video.device)
    frames = video.shape[2]
    # every op is per frame: on a CPU, a chunk of frames goes through all the ops while it is still in the
    # caches (16 frames measured best against 4, 8 and 32); on a GPU whole clips, for fewer launches
    step = CPU_CHUNK_FRAMES if video.device.type == "cpu" else frames
    mean = _constant("mean", IMAGENET_MEAN, x).view(3, 1, 1, 1)
    std = _constant("std", IMAGENET_STD, x).view(3, 1, 1, 1)
    for i, p in enumerate(params.tolist()):
        for t0 in range(0, frames, step):
            part = x[i, :, t0 : t0 + step]
            part.copy_(video[i, :, t0 : t0 + step]).div_(255.0)
            _frames(part, p, _workspace(part, step))
            if normalize:  # two passes: one addcmul with [3, 1, 1, 1] operands measured 2.5x slower
                part.sub_(mean).div_(std)
    return x


def finish_batch(batch: dict, device: torch.device | str | None = None) -> dict:
    """Turn a collated loader batch into model inputs on `device`: photometric ops on every video view
    (global + locals), audio views moved as they are. Keys without a matching `*_aug` pass through."""
    out = {}
    for key, value in batch.items():
        if key.endswith("_aug"):
            continue
        aug = batch.get(f"{key}_aug")
        if aug is None:
            out[key] = (
                value.to(device)
                if isinstance(value, torch.Tensor)
                else [v.to(device) for v in value]
                if isinstance(value, list)
                else value
            )
        elif isinstance(value, list):
            out[key] = [apply(v.to(device), a) for v, a in zip(value, aug)]
        else:
            out[key] = apply(value.to(device), aug)
    return out
