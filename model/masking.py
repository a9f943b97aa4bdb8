"""MAE random masking (per sample, per token; no tube masking), reproducible from explicit noise."""

from __future__ import annotations

import torch


def random_masking(
    x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None, generator: torch.Generator | None = None
):
    """Keep round(N * (1 - mask_ratio)) tokens of x [B, N, D] per sample (59/392 at 0.85, 112/560 at 0.80).

    Tokens with the smallest `noise` ([B, N], uniform) are kept. Pass `noise` (or a seeded `generator`)
    to reproduce a mask exactly. Returns (kept tokens [B, K, D], mask [B, N] with 1 = removed,
    ids_restore [B, N] that undoes the shuffle).
    """
    b, n, d = x.shape
    len_keep = round(n * (1 - mask_ratio))  # Python round, as official: 58.8 -> 59
    if noise is None:
        noise = torch.rand(b, n, device=x.device, generator=generator)
    elif noise.shape != (b, n):
        raise ValueError(f"noise must have shape {(b, n)}, got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    mask = torch.ones(b, n, device=x.device)  # float32 like official, also under autocast
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return kept, mask, ids_restore
