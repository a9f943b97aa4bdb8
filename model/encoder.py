"""Video / audio ViT encoders built from timm `Block`s, with the official token layout.

Key names follow the official *eval* naming (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.N.*`,
`norm`), so released backbones load after a rename (see `model.convert_official`).

Shapes: video x [B, 3, T, H, W], tubelet (4, 16, 16) -> (T/4)(H/16)(W/16) tokens (392 at 32x112^2,
72 at 8x96^2); audio x [B, 1, 80, T], patch (4 freq, 16 time) -> 20 x T/16 tokens (560 at T=448, 140 at 112).
Patches are flattened channel-last, (pt ph pw c) / (pf pt c), as the official Rearrange does: this order is
also the order of the reconstruction target.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from .config import ConfigError, EncoderConfig
from .masking import random_masking


def make_blocks(width: int, depth: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-5) -> nn.ModuleList:
    """Pre-norm ViT blocks as in the official ViT_Backbone: qkv without bias, GELU, no drop-path."""
    norm = partial(nn.LayerNorm, eps=eps)
    return nn.ModuleList(
        Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=False, norm_layer=norm) for _ in range(depth)
    )


def init_vit_(module: nn.Module) -> None:
    """Official encoder/decoder init: Xavier-uniform Linear weights, zero bias, LayerNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def patchify(x: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """[B, C, *dims] -> [B, N, prod(patch)*C], tokens in (grid) raster order, values channel-last."""
    b, c, *dims = x.shape
    grid = [d // p for d, p in zip(dims, patch)]
    shape = [b, c]
    for g, p in zip(grid, patch):
        shape += [g, p]
    x = x.reshape(shape)
    n = len(dims)
    grid_axes = [2 + 2 * i for i in range(n)]
    patch_axes = [3 + 2 * i for i in range(n)]
    x = x.permute(0, *grid_axes, *patch_axes, 1)
    return x.reshape(b, -1, x.shape[-1] * math.prod(patch))


class PatchEmbed(nn.Module):
    """Linear over flattened patches (official `cuboid_embed` / `patch_embed`); equals a strided conv."""

    def __init__(self, patch: tuple[int, ...], in_chans: int, width: int):
        super().__init__()
        self.patch = tuple(patch)
        self.proj = nn.Linear(in_chans * math.prod(patch), width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches = patchify(x, self.patch)
        return patches, self.proj(patches)


def interpolate_pos_embed(
    pos: torch.Tensor, modality: str, src_grid: tuple[int, ...], dst_grid: tuple[int, ...]
) -> torch.Tensor:
    """Resample a [1, 1+N, D] positional embedding from `src_grid` to `dst_grid` (official rule, docs/xkd_spec.md §9).

    The official code passes *scale factors* (dst + 0.1) / src per axis (align_corners=False) rather than
    an output size; the two give different values, so the same call is made here. Video: trilinear over
    (t, h, w) (torch copies an axis whose size does not change, e.g. time at 224 px). Audio: bicubic along
    time only, frequency scale exactly 1 (the frequency grid must stay native). The CLS position is copied.
    """
    if tuple(dst_grid) == tuple(src_grid):
        return pos
    cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
    dim = pos.shape[-1]
    grid_first = patch_pos.reshape(1, *src_grid, dim).movedim(-1, 1)
    if modality == "video":
        scale = tuple((d + 0.1) / s for d, s in zip(dst_grid, src_grid))
        out = F.interpolate(grid_first, scale_factor=scale, mode="trilinear", align_corners=False)
    else:
        if dst_grid[0] != src_grid[0]:
            raise ConfigError(f"audio frequency grid must stay {src_grid[0]} patches, got {dst_grid[0]}")
        scale = (1.0, (dst_grid[1] + 0.1) / src_grid[1])
        out = F.interpolate(grid_first, scale_factor=scale, mode="bicubic", align_corners=False)
    if tuple(out.shape[2:]) != tuple(dst_grid):  # floor(src * scale) must land on the target grid
        raise ConfigError(f"pos-embed interpolation gave grid {tuple(out.shape[2:])}, expected {tuple(dst_grid)}")
    return torch.cat([cls_pos, out.movedim(1, -1).reshape(1, -1, dim)], dim=1)


def cls_attention(block: Block, x: torch.Tensor) -> torch.Tensor:
    """Softmax attention of the CLS query over the patch keys in `block`, for block input x: [B, H, N].

    timm's fused attention does not return the map, so the one row the teacher needs is recomputed from
    norm1(x) with the block's own q/k weights (1/3 of a qkv projection, teacher-only, under no_grad).
    """
    attn = block.attn
    h = block.norm1(x)
    b, n, c = h.shape
    heads = attn.num_heads
    w_q, w_k, _ = attn.qkv.weight.chunk(3, dim=0)
    b_q = b_k = None
    if attn.qkv.bias is not None:
        b_q, b_k, _ = attn.qkv.bias.chunk(3)
    q = F.linear(h[:, :1], w_q, b_q).reshape(b, 1, heads, c // heads).transpose(1, 2)
    k = F.linear(h, w_k, b_k).reshape(b, n, heads, c // heads).transpose(1, 2)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1)  # [B, H, 1, N]
    return logits.softmax(dim=-1)[:, :, 0, 1:]


def _packed_attention(attn: nn.Module, h: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
    """timm Attention over packed tokens h [sum B_i N_i, D]: one qkv/proj GEMM for all sequences,
    fused SDPA per sequence group."""
    d = h.shape[-1]
    heads = attn.num_heads
    outs = []
    for chunk, (b, n) in zip(attn.qkv(h).split([b * n for b, n in shapes]), shapes):
        q, k, v = chunk.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        outs.append(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b * n, d))
    return attn.proj(attn.norm(torch.cat(outs)))


def run_blocks(blocks: nn.ModuleList, seqs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Run sequences of different lengths [B_i, N_i, D] through the same blocks in one packed pass.

    Same math as calling each block on each sequence (attention stays within a sequence), but every
    Linear/LayerNorm/MLP sees all tokens at once: bigger GEMMs, and each weight gradient is one GEMM
    instead of one per pass plus an accumulation. Used for the student's masked-global + local views
    (and, for MAS/MATS, both modalities through the shared blocks). Assumes the plain pre-norm timm Block
    built by `make_blocks` (no layer scale, drop-path, dropout or gating), which is checked.
    """
    if len(seqs) == 1:
        x = seqs[0]
        for blk in blocks:
            x = blk(x)
        return [x]
    shapes = [tuple(s.shape[:2]) for s in seqs]
    d = seqs[0].shape[-1]
    x = torch.cat([s.reshape(-1, d) for s in seqs])
    for blk in blocks:
        if not (
            isinstance(blk.ls1, nn.Identity)
            and isinstance(blk.drop_path1, nn.Identity)
            and getattr(blk.attn, "gate", None) is None
            and blk.attn.attn_drop.p == 0
        ):
            raise ValueError("run_blocks supports plain pre-norm blocks only")
        x = x + _packed_attention(blk.attn, blk.norm1(x), shapes)
        x = x + blk.mlp(blk.norm2(x))
    return [c.reshape(b, n, d) for c, (b, n) in zip(x.split([b * n for b, n in shapes]), shapes)]


class Encoder(nn.Module):
    """ViT encoder for one modality. `blocks` may be passed in to share them (MAS / MATS)."""

    def __init__(self, cfg: EncoderConfig, blocks: nn.ModuleList | None = None, init: bool = True):
        super().__init__()
        self.cfg = cfg
        self.grid = cfg.grid()
        self.patch_embed = PatchEmbed(cfg.patch, cfg.input_size[0], cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.num_patches, cfg.width))
        self.blocks = (
            blocks if blocks is not None else make_blocks(cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.ln_eps)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        if init and self.cls_token.device.type != "meta":
            self.reset_parameters()

    def reset_parameters(self) -> None:
        init_vit_(self)
        nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-2.0, b=2.0)
        nn.init.normal_(self.cls_token, std=0.02)

    def pos_embed_for(self, grid: tuple[int, ...]) -> torch.Tensor:
        return interpolate_pos_embed(self.pos_embed, self.cfg.modality, self.grid, grid)

    def _grid_of(self, x: torch.Tensor) -> tuple[int, ...]:
        return self.cfg.grid(tuple(x.shape[2:]))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(raw patches, patch tokens + pos, CLS + its pos) for an input of any divisible size."""
        pos = self.pos_embed_for(self._grid_of(x))
        patches, tokens = self.patch_embed(x)
        return patches, tokens + pos[:, 1:], self.cls_token + pos[:, :1]

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """Block input for x: [CLS + pos; patch tokens + pos], [B, 1+N, D]."""
        _, tokens, cls = self.embed(x)
        return torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)

    def masked_sequence(
        self,
        x: torch.Tensor,
        mask_ratio: float,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ):
        """MAE block input: pos added before masking, CLS prepended after. Returns (sequence [B, 1+K, D],
        target patches [B, N, P], mask [B, N] with 1 = removed, ids_restore [B, N])."""
        pos = self.pos_embed_for(self._grid_of(x))
        patches = patchify(x, self.patch_embed.patch)
        b, n, _ = patches.shape
        if noise is None:  # drawn here with the official shape/order so a seeded RNG gives the same mask
            noise = torch.rand(b, n, device=x.device, generator=generator)
        # Masking the raw patches and embedding only the kept ones equals the official embed-then-mask
        # (the Linear and the pos-add act per token) at 15-20 % of the embedding cost.
        kept, mask, ids_restore = random_masking(patches, mask_ratio, noise=noise)
        ids_keep = ids_restore.argsort(dim=1)[:, : kept.shape[1]]
        kept_pos = torch.gather(pos[:, 1:].expand(b, -1, -1), 1, ids_keep.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))
        tokens = self.patch_embed.proj(kept) + kept_pos
        cls = (self.cls_token + pos[:, :1]).expand(b, -1, -1)
        return torch.cat([cls, tokens], dim=1), patches, mask, ids_restore

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised tokens [B, 1+N, D] (CLS first)."""
        return self.norm(run_blocks(self.blocks, [self.sequence(x)])[0])

    def forward_masked(
        self,
        x: torch.Tensor,
        mask_ratio: float,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ):
        """MAE path. Returns latent [B, 1+K, D] (normalised), target patches, mask, ids_restore."""
        seq, patches, mask, ids_restore = self.masked_sequence(x, mask_ratio, noise, generator)
        return self.norm(run_blocks(self.blocks, [seq])[0]), patches, mask, ids_restore

    def forward_with_cls_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised tokens [B, 1+N, D], last block's CLS->patch attention [B, heads, N])."""
        h = self.sequence(x)
        for blk in self.blocks[:-1]:
            h = blk(h)
        attn = cls_attention(self.blocks[-1], h)
        return self.norm(self.blocks[-1](h)), attn

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluation feature: mean of the patch tokens after the final LayerNorm, CLS excluded [B, D]."""
        return self.forward(x)[:, 1:].mean(dim=1)
