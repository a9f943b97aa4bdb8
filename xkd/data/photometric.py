"""Batched photometric video augmentation + normalisation, on any device (CPU loader or the GPU).

Input: uint8 clips [B, 3, T, H, W] and per-clip parameters [B, 12] drawn in the loader
(`views.Photometric.as_tensor`). Per clip, in this order (the official local/global transform):
ColorJitter's four ops in the clip's own random order -> RandomGray -> Gaussian blur -> /255 and
ImageNet normalisation. Every frame of a clip gets the same parameters. The ops follow torchvision's
tensor semantics (clamp to [0, 1] after each op; contrast against the per-frame grey mean); unlike the
PIL path of the official code there is no rounding to uint8 between ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_WEIGHTS = (0.2989, 0.587, 0.114)
BLUR_KERNEL = 9  # 96 // 20 * 2 + 1 (official, for the 96 px local view)


def grey(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, ...] -> [N, 1, ...] luma."""
    w = x.new_tensor(GREY_WEIGHTS).view(1, 3, *([1] * (x.dim() - 2)))
    return (x * w).sum(1, keepdim=True)


def _per_sample(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return f.view(-1, *([1] * (x.dim() - 1)))


def brightness(x, f):
    return (x * _per_sample(f, x)).clamp_(0, 1)


def contrast(x, f):
    mean = grey(x).mean(dim=(-2, -1), keepdim=True)  # per frame, as PIL/torchvision per image
    f = _per_sample(f, x)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def saturation(x, f):
    f = _per_sample(f, x)
    return (f * x + (1 - f) * grey(x)).clamp_(0, 1)


def _rgb_to_hsv(x):
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return h, s, maxc


def _hsv_to_rgb(h, s, v):
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = torch.stack([torch.stack(c) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))])
    idx = i.unsqueeze(0).unsqueeze(0).expand(3, 1, *i.shape)
    return table.gather(1, idx).squeeze(1).movedim(0, 1)


def hue(x, f):
    h, s, v = _rgb_to_hsv(x)
    h = (h + _per_sample(f, h)) % 1.0
    return _hsv_to_rgb(h, s, v).clamp_(0, 1)


OPS = (brightness, contrast, saturation, hue)  # index = position in the parameter vector


def _gaussian_1d(sigma: float, device, dtype) -> torch.Tensor:
    half = (BLUR_KERNEL - 1) / 2
    x = torch.linspace(-half, half, BLUR_KERNEL, device=device, dtype=dtype)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


def blur(x: torch.Tensor, sigma_x: float, sigma_y: float) -> torch.Tensor:
    """Separable Gaussian blur (kernel 9, reflect padding) of [N, 3, T, H, W]."""
    n, c, t, h, w = x.shape
    planes = x.reshape(n * c * t, 1, h, w)
    pad = BLUR_KERNEL // 2
    kx = _gaussian_1d(sigma_x, x.device, x.dtype).view(1, 1, 1, -1)
    ky = _gaussian_1d(sigma_y, x.device, x.dtype).view(1, 1, -1, 1)
    planes = F.conv2d(F.pad(planes, (pad, pad, 0, 0), mode="reflect"), kx)
    planes = F.conv2d(F.pad(planes, (0, 0, pad, pad), mode="reflect"), ky)
    return planes.reshape(n, c, t, h, w)


def apply(video: torch.Tensor, params: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """uint8 [B, 3, T, H, W] + params [B, 12] -> float32 views (normalised unless normalize=False)."""
    x = video.float().div_(255.0)
    params = params.to(x.device, torch.float32)
    factors, order = params[:, :4], params[:, 4:8].long()
    for pos in range(4):
        for op, fn in enumerate(OPS):
            idx = (order[:, pos] == op).nonzero().flatten()
            if idx.numel():
                x[idx] = fn(x[idx], factors[idx, op])
    gidx = (params[:, 8] > 0.5).nonzero().flatten()
    if gidx.numel():
        x[gidx] = grey(x[gidx]).expand(-1, 3, *x.shape[2:])
    bidx = (params[:, 9] > 0.5).nonzero().flatten()
    if bidx.numel():
        sigmas = params[bidx, 10:12]
        for pair in torch.unique(sigmas, dim=0):  # one group for the official fixed sigma
            sel = bidx[(sigmas == pair).all(1)]
            x[sel] = blur(x[sel], float(pair[0]), float(pair[1]))
    if normalize:
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
        x = (x - mean) / std
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
