"""Encoders: token counts, positional-embedding interpolation (official scale-factor rule), CLS attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.config import ConfigError, preset
from model.encoder import Encoder, interpolate_pos_embed, patchify, run_blocks


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = preset("tiny")
    return Encoder(cfg.encoder("video")), Encoder(cfg.encoder("audio"))


@pytest.mark.parametrize(
    "modality,size,tokens",
    [
        ("video", (3, 32, 112, 112), 392),
        ("video", (3, 8, 96, 96), 72),
        ("video", (3, 32, 224, 224), 1568),
        ("audio", (1, 80, 448), 560),
        ("audio", (1, 80, 112), 140),
    ],
)
def test_token_counts_for_every_view(tiny, modality, size, tokens):
    enc = tiny[0] if modality == "video" else tiny[1]
    out = enc(torch.randn(1, *size))
    assert out.shape == (1, 1 + tokens, enc.cfg.width)
    assert enc.features(torch.randn(2, *size)).shape == (2, enc.cfg.width)


def test_masked_forward_keeps_59_and_112_tokens(tiny):
    v, a = tiny
    lat, target, mask, _ = v.forward_masked(torch.randn(2, 3, 32, 112, 112), 0.85)
    assert lat.shape[1] == 1 + 59 and target.shape == (2, 392, 3072) and mask.sum(1).tolist() == [333, 333]
    lat, target, mask, _ = a.forward_masked(torch.randn(2, 1, 80, 448), 0.80)
    assert lat.shape[1] == 1 + 112 and target.shape == (2, 560, 64)


def test_patchify_is_channel_last_like_the_official_rearrange():
    x = torch.arange(2 * 3 * 8 * 32 * 32, dtype=torch.float32).reshape(2, 3, 8, 32, 32)
    p = patchify(x, (4, 16, 16))
    # "b c (t pt) (h ph) (w pw) -> b (t h w) (pt ph pw c)"
    t, h, w, pt, ph, pw, c = 1, 1, 0, 2, 3, 5, 1
    token = (t * 2 + h) * 2 + w
    assert p[1, token, ((pt * 16 + ph) * 16 + pw) * 3 + c] == x[1, c, t * 4 + pt, h * 16 + ph, w * 16 + pw]
    a = torch.randn(1, 1, 80, 448)
    pa = patchify(a, (4, 16))
    assert torch.equal(pa[0, 28 * 2 + 5], a[0, 0, 8:12, 80:96].reshape(-1))  # freq-major grid


def _linear_axis(x, axis, out, scale):
    """align_corners=False linear resampling along one axis with an explicit scale factor."""
    n = x.shape[axis]
    rows = []
    for d in range(out):
        src = max((d + 0.5) / scale - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n - 1)
        i1, w = min(i0 + 1, n - 1), src - i0
        rows.append(x.select(axis, i0) * (1 - w) + x.select(axis, i1) * w)
    return torch.stack(rows, dim=axis)


def _cubic_axis(x, axis, out, scale, a=-0.75):
    n = x.shape[axis]

    def k(s):
        s = abs(s)
        return ((a + 2) * s - (a + 3)) * s * s + 1 if s <= 1 else ((a * s - 5 * a) * s + 8 * a) * s - 4 * a

    rows = []
    for d in range(out):
        src = (d + 0.5) / scale - 0.5
        i = math.floor(src)
        t = src - i
        rows.append(sum(x.select(axis, min(max(i + m, 0), n - 1)) * k(t - m) for m in (-1, 0, 1, 2)))
    return torch.stack(rows, dim=axis)


def test_video_pos_embed_uses_official_scale_factor_rule():
    torch.manual_seed(1)
    pos = torch.randn(1, 1 + 8 * 7 * 7, 16, dtype=torch.float64)
    out = interpolate_pos_embed(pos, "video", (8, 7, 7), (2, 6, 6))
    assert out.shape == (1, 1 + 72, 16) and torch.equal(out[:, 0], pos[:, 0])
    grid = pos[0, 1:].reshape(8, 7, 7, 16)
    ref = _linear_axis(grid, 0, 2, 2.1 / 8)
    ref = _linear_axis(ref, 1, 6, 6.1 / 7)
    ref = _linear_axis(ref, 2, 6, 6.1 / 7)
    assert torch.allclose(out[0, 1:], ref.reshape(72, 16), atol=1e-12)
    sized = F.interpolate(grid.permute(3, 0, 1, 2)[None], size=(2, 6, 6), mode="trilinear", align_corners=False)
    assert (sized[0].permute(1, 2, 3, 0).reshape(72, 16) - out[0, 1:]).abs().max() > 1e-2  # rule matters
    # 224-px fine-tuning: 7x7 -> 14x14 (1568 tokens); torch leaves the same-size time axis as it is
    out = interpolate_pos_embed(pos, "video", (8, 7, 7), (8, 14, 14))
    ref = _linear_axis(_linear_axis(grid, 1, 14, 14.1 / 7), 2, 14, 14.1 / 7)
    assert torch.allclose(out[0, 1:], ref.reshape(-1, 16), atol=1e-12)
    assert interpolate_pos_embed(pos, "video", (8, 7, 7), (8, 7, 7)) is pos


def test_audio_pos_embed_bicubic_along_time_only():
    torch.manual_seed(2)
    pos = torch.randn(1, 1 + 20 * 28, 8, dtype=torch.float64)
    out = interpolate_pos_embed(pos, "audio", (20, 28), (20, 7))
    assert out.shape == (1, 1 + 140, 8) and torch.equal(out[:, 0], pos[:, 0])
    ref = _cubic_axis(pos[0, 1:].reshape(20, 28, 8), 1, 7, 7.1 / 28)
    assert torch.allclose(out[0, 1:], ref.reshape(140, 8), atol=1e-12)
    with pytest.raises(ConfigError, match="frequency"):
        interpolate_pos_embed(pos, "audio", (20, 28), (10, 7))


def test_cls_attention_is_the_last_blocks_softmax_row(tiny):
    v, _ = tiny
    x = torch.randn(2, 3, 8, 96, 96)
    tokens, attn = v.forward_with_cls_attention(x)
    assert torch.allclose(tokens, v(x), atol=1e-6)  # same output as the fused path
    assert attn.shape == (2, v.cfg.heads, 72)
    # reference: the explicit (non-fused) attention map of the last block, CLS row, patch columns
    _, tok, cls = v.embed(x)
    h = torch.cat([cls.expand(2, -1, -1), tok], 1)
    for blk in v.blocks[:-1]:
        h = blk(h)
    blk = v.blocks[-1]
    qkv = blk.attn.qkv(blk.norm1(h)).reshape(2, 73, 3, v.cfg.heads, -1).permute(2, 0, 3, 1, 4)
    full = ((qkv[0] @ qkv[1].transpose(-2, -1)) * blk.attn.head_dim**-0.5).softmax(-1)
    assert torch.allclose(attn, full[:, :, 0, 1:], atol=1e-6)
    assert (attn.sum(-1) < 1).all()  # the CLS->CLS weight is excluded


def test_packed_blocks_equal_separate_passes(tiny):
    v, _ = tiny
    seqs = [torch.randn(2, 60, 64, requires_grad=True), torch.randn(3, 73, 64, requires_grad=True)]
    packed = run_blocks(v.blocks, seqs)
    separate = []
    for s in seqs:
        x = s
        for blk in v.blocks:
            x = blk(x)
        separate.append(x)
    for p, s in zip(packed, separate):
        assert torch.allclose(p, s, atol=1e-5)
    w = v.blocks[0].attn.qkv.weight
    g_packed = torch.autograd.grad(sum((p**2).sum() for p in packed), [w, *seqs])
    g_sep = torch.autograd.grad(sum((s**2).sum() for s in separate), [w, *seqs])
    for a, b in zip(g_packed, g_sep):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_masked_sequence_equals_official_embed_then_mask(tiny):
    from model.masking import random_masking

    v, _ = tiny
    x = torch.randn(2, 3, 32, 112, 112)
    noise = torch.rand(2, 392)
    seq, patches, mask, ids = v.masked_sequence(x, 0.85, noise=noise)
    _, tokens, cls = v.embed(x)  # official order: embed all, add pos, then mask
    kept, mask_ref, ids_ref = random_masking(tokens, 0.85, noise=noise)
    assert torch.equal(mask, mask_ref) and torch.equal(ids, ids_ref)
    assert torch.allclose(seq[:, 1:], kept, atol=1e-5) and torch.allclose(seq[:, :1], cls.expand(2, -1, -1))
    assert torch.equal(patches, patchify(x, (4, 16, 16)))
