"""Optimiser helpers: the official two AdamW parameter groups and DINO-style per-tensor gradient clipping."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

TOKEN_NAMES = ("pos_embed", "cls_token", "mask_token")


def param_groups(model: nn.Module, weight_decay: float = 0.3, decay_pos_tokens: bool = True) -> list[dict]:
    """[no-decay group (wd 0), decay group (wd `weight_decay`)] over trainable parameters, official order.

    Official rule: names ending in ".bias" or any 1-D tensor get no decay; everything else is decayed,
    including positional embeddings, CLS and mask tokens (they are 3-D). `decay_pos_tokens=False`
    moves those tokens to the no-decay group as MAE does. Shared tensors (MAS/MATS) appear once.
    """
    no_decay, decay = [], []
    for name, p in model.named_parameters():  # named_parameters() de-duplicates shared tensors
        if not p.requires_grad:
            continue
        token = not decay_pos_tokens and name.rsplit(".", 1)[-1] in TOKEN_NAMES
        (no_decay if name.endswith(".bias") or p.ndim == 1 or token else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


@torch.no_grad()
def clip_grad_per_tensor_(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale each gradient to L2 norm <= max_norm on its own (DINO's clip_gradients: coef
    max_norm / (norm + 1e-6), applied when < 1). Returns the pre-clip norms. Uses foreach kernels."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch.stack(torch._foreach_norm(grads))
    coefs = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(coefs.to(grads[0].dtype).unbind()))
    return norms


def build_optimizer(
    model: nn.Module,
    lr: float = 1e-4,
    weight_decay: float = 0.3,
    betas: tuple[float, float] = (0.9, 0.95),
    decay_pos_tokens: bool = True,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over `param_groups`; the training loop sets lr (and wd of group 1) per iteration.
    `fused=None` picks the fused kernel where torch has one (CPU and CUDA float tensors)."""
    groups = param_groups(model, weight_decay, decay_pos_tokens)
    if fused is None:
        fused = all(p.dtype.is_floating_point for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)
