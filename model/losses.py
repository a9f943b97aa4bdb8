"""XKD losses as standalone functions (docs/xkd_spec.md §3). Each computes in the dtype of its inputs, so a float64
call gives the exact value the float32 official code approximates.

- `reconstruction_loss`: per-patch normalised MSE on masked tokens (L_rec^m).
- `dino_cross_entropy` + `dino_center_update` (+ the stateful `DINOCrossLoss`): cross-modal DINO (L_kd).
- `mmd`: multi-kernel Gaussian MMD, biased V-statistic (L_da).
- `cross_modal_attention` + `align_features` + `refine`: teacher CLS-attention re-weighting ("refine").
- `total_loss`: (w_da L_da + w_kd L_kd + w_rec L_rec) / (w_da + w_kd + w_rec).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

MMD_GAMMAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Mean over masked tokens (mask == 1) of the per-token MSE; pred/target [B, N, P], mask [B, N].

    With `norm_pix` the target patch is standardised with its own mean and *unbiased* variance
    (torch's default `var`, as official), over all P values of the patch (t, h, w, c together).
    """
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps) ** 0.5
    per_token = ((pred - target) ** 2).mean(dim=-1)
    return (per_token * mask).sum() / mask.sum()


def dino_cross_entropy(
    student_output: torch.Tensor,
    teacher_output: torch.Tensor,
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
    num_student_views: int,
    num_teacher_views: int = 1,
) -> torch.Tensor:
    """Cross-modal DINO loss (official DINOLossX.forward without the centre update).

    Outputs are stacked view-major: student [S*B, K], teacher [T*B, K]. Every (teacher view, student view)
    pair counts -- no same-view pairs are skipped, because teacher and student are different modalities.
    The teacher distribution softmax((t - c) / tau_t) is detached.
    """
    student = (student_output / student_temp).chunk(num_student_views)
    teacher = F.softmax((teacher_output - center) / teacher_temp, dim=-1).detach().chunk(num_teacher_views)
    total = 0.0
    for q in teacher:
        for s in student:
            total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
    return total / (len(teacher) * len(student))


@torch.no_grad()
def dino_center_update(center: torch.Tensor, teacher_output: torch.Tensor, momentum: float) -> torch.Tensor:
    """New centre c*m + mean_batch(teacher)*(1-m). The batch mean is all-reduced over ranks only when
    torch.distributed is initialised (official behaviour), so single-process use needs no process group."""
    batch_center = teacher_output.sum(dim=0, keepdim=True)
    count = teacher_output.shape[0]
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(batch_center)
        count *= dist.get_world_size()
    batch_center = batch_center / count
    return center * momentum + batch_center * (1 - momentum)


class DINOCrossLoss(nn.Module):
    """Holds one direction's centre as a buffer (checkpointed with the model) and updates it per call."""

    def __init__(self, out_dim: int, center_momentum: float = 0.9):
        super().__init__()
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(
        self, student_output, teacher_output, student_temp, teacher_temp, num_student_views, num_teacher_views=1
    ):
        loss = dino_cross_entropy(
            student_output,
            teacher_output,
            self.center,
            student_temp,
            teacher_temp,
            num_student_views,
            num_teacher_views,
        )
        new = dino_center_update(self.center, teacher_output.detach(), self.center_momentum)
        self.center.copy_(new)
        return loss


def squared_distances(x: torch.Tensor, y: torch.Tensor, form: str = "expanded") -> torch.Tensor:
    """Pairwise ||x_i - y_j||^2 [Nx, Ny].

    "expanded" is the official DomainBed form ||x||^2 + ||y||^2 - 2 x.y (addmm, clamped at 1e-30): cheap,
    but in float32 the diagonal of K(x, x) keeps round-off of order ||x||^2 * 1e-7, which the large-gamma
    kernels amplify (~2.5 % error at 8192-d). "direct" sums the squared differences (torch.cdist without
    the matmul shortcut): exact zeros on the diagonal and no B x B x D intermediate.
    """
    if form == "expanded":
        x_norm = x.pow(2).sum(dim=-1, keepdim=True)
        y_norm = y.pow(2).sum(dim=-1, keepdim=True)
        d = torch.addmm(y_norm.transpose(-2, -1), x, y.transpose(-2, -1), alpha=-2).add_(x_norm)
        return d.clamp_min_(1e-30)
    if form == "direct":
        return torch.cdist(x, y, p=2.0, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    raise ValueError(f"unknown distance form {form!r}; use 'expanded' or 'direct'")


def gaussian_kernel(
    x: torch.Tensor, y: torch.Tensor, gammas: Sequence[float] = MMD_GAMMAS, form: str = "expanded"
) -> torch.Tensor:
    """K(x, y) = sum_gamma exp(-gamma ||x - y||^2), [Nx, Ny]."""
    d = squared_distances(x, y, form)
    k = torch.zeros_like(d)
    for g in gammas:
        k = k + torch.exp(d * -g)
    return k


def mmd(x: torch.Tensor, y: torch.Tensor, gammas: Sequence[float] = MMD_GAMMAS, form: str = "expanded") -> torch.Tensor:
    """Biased multi-kernel MMD: mean K(x,x) + mean K(y,y) - 2 mean K(x,y), diagonals included."""
    return (
        gaussian_kernel(x, x, gammas, form).mean()
        + gaussian_kernel(y, y, gammas, form).mean()
        - 2 * gaussian_kernel(x, y, gammas, form).mean()
    )


def cross_modal_attention(attn_v: torch.Tensor, attn_a: torch.Tensor, mode: str = "mean"):
    """Rescale each modality's CLS->patch attention [B, H, N] by the other's (official cross_modal_attn).

    Official builds the outer product a_v (x) a_a and averages it over the other modality's axis; that is
    a_v[i] * mean_j a_a[j], computed here directly (same value, no B x H x Nv x Na tensor).
    "mean": then divide by mean_i a_v[i]; "softmax": softmax over patches instead.
    """
    mean_v = attn_v.mean(dim=-1, keepdim=True)
    mean_a = attn_a.mean(dim=-1, keepdim=True)
    if mode == "mean":
        return attn_v * mean_a / mean_v, attn_a * mean_v / mean_a
    if mode == "softmax":
        return (attn_v * mean_a).softmax(dim=-1), (attn_a * mean_v).softmax(dim=-1)
    raise ValueError(f"unknown refine mode {mode!r}; use 'mean' or 'softmax'")


def align_features(feat: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Weight patch features [B, N, D] by the head-mean attention [B, H, N], rescaled so that the
    patch-mean keeps its norm: F'_i = s * w_i * F_i with s = ||mean F|| / ||mean (w F)||."""
    w = attn.mean(dim=1).unsqueeze(-1)
    energy_before = feat.mean(dim=1).pow(2).sum(dim=1, keepdim=True)
    energy_after = (feat * w).mean(dim=1).pow(2).sum(dim=1, keepdim=True)
    scale = (energy_before / energy_after).sqrt().unsqueeze(-1)
    return scale * w * feat


def refine(feat_v, feat_a, attn_v, attn_a, mode: str = "mean"):
    """Teacher "refine": returns the re-weighted patch features (video, audio). mode "none" = unchanged."""
    if mode == "none":
        return feat_v, feat_a
    cv, ca = cross_modal_attention(attn_v, attn_a, mode)
    return align_features(feat_v, cv), align_features(feat_a, ca)


def total_loss(
    da: torch.Tensor, kd: torch.Tensor, rec: torch.Tensor, w_da: float = 1.0, w_kd: float = 1.0, w_rec: float = 5.0
) -> torch.Tensor:
    """(w_da*L_da + w_kd*L_kd + w_rec*L_rec) / (w_da + w_kd + w_rec); official weights (1, 1, 5)."""
    return (da * w_da + kd * w_kd + rec * w_rec) / (w_da + w_kd + w_rec)
