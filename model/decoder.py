"""MAE decoder (official VideoMAEWrapper / AudioMAEWrapper decoder half).

Linear enc->dec width, mask tokens re-inserted in the original order, learnt decoder pos-embedding over
the *global* grid, ViT blocks, output Linear to the patch dimension. Unlike MAE there is **no** LayerNorm
before the output projection, and the CLS token goes through the blocks and is dropped at the output.
"""

from __future__ import annotations

import torch
from torch import nn

from .encoder import init_vit_, make_blocks


class MAEDecoder(nn.Module):
    def __init__(
        self,
        encoder_width: int,
        width: int,
        depth: int,
        heads: int,
        num_patches: int,
        patch_dim: int,
        mlp_ratio: float = 4.0,
        eps: float = 1e-5,
        init: bool = True,
    ):
        super().__init__()
        self.num_patches = num_patches
        # Official: Identity when the widths already match (never the case in the presets).
        self.mid_proj = nn.Linear(encoder_width, width) if encoder_width != width else nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + num_patches, width))
        self.blocks = make_blocks(width, depth, heads, mlp_ratio, eps)
        self.out_proj = nn.Linear(width, patch_dim) if width != patch_dim else nn.Identity()
        if init and self.mask_token.device.type != "meta":
            self.reset_parameters()

    def reset_parameters(self) -> None:
        init_vit_(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-2.0, b=2.0)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent [B, 1+K, De] (CLS first, visible tokens) -> predicted patches [B, N, P]."""
        if ids_restore.shape[1] != self.num_patches:
            raise ValueError(f"decoder expects the global grid ({self.num_patches} tokens), got {ids_restore.shape[1]}")
        x = self.mid_proj(latent)
        b, k1, d = x.shape
        mask_tokens = self.mask_token.expand(b, self.num_patches + 1 - k1, d)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        x = torch.cat([x[:, :1], x_], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.out_proj(x)[:, 1:]
