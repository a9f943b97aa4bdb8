"""DINO projection head as XKD builds it (config `2048-gelu-3-256-8192-norm3`).

Linear-LN-GELU-Linear-LN-GELU-Linear, L2-normalise, weight-normalised Linear (gain fixed at 1, frozen),
then a LayerNorm without affine parameters (an XKD addition). The official head builds **one** LayerNorm
and places it after both hidden Linears, so `mlp.1` and `mlp.4` are the same module (one set of parameters,
summed gradients, one update); the state dict therefore lists both keys, as the official one does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeightNormLinear(nn.Module):
    """Bias-free Linear with weight = g * v / ||v|| (row-wise), keys `weight_g`, `weight_v` as
    `nn.utils.weight_norm` names them (the parametrizations API would rename them)."""

    def __init__(self, in_dim: int, out_dim: int, init: bool = True):
        super().__init__()
        # g is fixed at 1 and frozen (norm_last_layer=True) but stays a Parameter so counts match official.
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=False)
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        if init and self.weight_v.device.type != "meta":
            # The official last layer keeps nn.Linear's default init (DINO applies trunc-normal before
            # creating it).
            nn.init.kaiming_uniform_(self.weight_v, a=5**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.weight_v
        return F.linear(x, v * (self.weight_g / v.norm(dim=1, keepdim=True)))


class DINOHead(nn.Module):
    def __init__(self, in_dim: int, hidden: int = 2048, bottleneck: int = 256, out_dim: int = 8192, init: bool = True):
        super().__init__()
        shared_ln = nn.LayerNorm(hidden)  # default eps 1e-5, as official
        act = nn.GELU()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden),
            shared_ln,
            act,
            nn.Linear(hidden, hidden),
            shared_ln,
            act,
            nn.Linear(hidden, bottleneck),
        )
        self.last_layer = WeightNormLinear(bottleneck, out_dim, init=init)
        self.last_norm = nn.LayerNorm(out_dim, elementwise_affine=False)
        if init and self.mlp[0].weight.device.type != "meta":
            for m in self.mlp:
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02, a=-2.0, b=2.0)
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_norm(self.last_layer(x))
