"""The XKD model: students (MAE encoder + DINO head), MAE decoders, EMA teachers, the loss terms.

Batch (a dict of views; the data step produces it):
    "video":        [B, 3, 32, 112, 112]      global video clip (4 s at 8 fps)
    "video_local":  list of [B, 3, 8, 96, 96]  local video views (1 for XKD, 3 for MAS/MATS)
    "audio":        [B, 1, 80, 448]           global log-mel spectrogram (4 s)
    "audio_local":  list of [B, 1, 80, 112]   local spectrogram views (1)
  optional "video_noise" [B, 392] / "audio_noise" [B, 560]: masking noise, for exact reproduction.

`XKD(cfg)(batch, epoch=0)` returns a dict of scalar tensors: rec_v, rec_a, rec, kd_vt2as, kd_at2vs, kd,
mmd_student, mmd_teacher, da, total (backprop `total`). It also updates the two DINO centres (buffers).

Variants: `xkd` (everything per modality), `mas` (the two students share their transformer blocks),
`mats` (students share, teachers share). Only `blocks` are shared; embeddings, CLS, pos-embeddings,
final norms, heads and decoders stay per modality.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from . import losses
from .config import XKDConfig
from .decoder import MAEDecoder
from .encoder import Encoder, make_blocks, run_blocks
from .head import DINOHead
from .schedules import teacher_temperature


class Branch(nn.Module):
    """An encoder and its DINO head (a student or a teacher of one modality)."""

    def __init__(self, encoder: Encoder, head: DINOHead):
        super().__init__()
        self.encoder = encoder
        self.head = head


class XKD(nn.Module):
    def __init__(self, cfg: XKDConfig, init: bool = True):
        super().__init__()
        self.cfg = cfg
        vcfg, acfg = cfg.encoder("video"), cfg.encoder("audio")

        def blocks():
            return make_blocks(cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio)

        def head():
            return DINOHead(cfg.width, cfg.head_hidden, cfg.head_bottleneck, cfg.head_out, init=init)

        student_blocks = blocks() if cfg.shared_student_blocks else None
        teacher_blocks = blocks() if cfg.shared_teacher_blocks else None
        self.video_student = Branch(Encoder(vcfg, student_blocks, init=init), head())
        self.audio_student = Branch(Encoder(acfg, student_blocks, init=init), head())
        self.video_teacher = Branch(Encoder(vcfg, teacher_blocks, init=False), head())
        self.audio_teacher = Branch(Encoder(acfg, teacher_blocks, init=False), head())
        self.video_decoder = MAEDecoder(
            cfg.width,
            cfg.decoder_width,
            cfg.decoder_depth,
            cfg.decoder_heads,
            vcfg.num_patches,
            vcfg.patch_dim,
            cfg.mlp_ratio,
            init=init,
        )
        self.audio_decoder = MAEDecoder(
            cfg.width,
            cfg.decoder_width,
            cfg.decoder_depth,
            cfg.decoder_heads,
            acfg.num_patches,
            acfg.patch_dim,
            cfg.mlp_ratio,
            init=init,
        )
        # Official names: vt2as_ce_loss (video teacher -> audio student), at2vs_ce_loss.
        self.vt2as = losses.DINOCrossLoss(cfg.head_out, cfg.center_momentum[0])
        self.at2vs = losses.DINOCrossLoss(cfg.head_out, cfg.center_momentum[1])
        self.copy_students_to_teachers()
        for p in self.teacher_parameters():
            p.requires_grad_(False)

    # ------------------------------------------------------------------ teachers
    def teacher_parameters(self):
        seen = set()
        for branch in (self.video_teacher, self.audio_teacher):
            for p in branch.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    @torch.no_grad()
    def copy_students_to_teachers(self) -> None:
        """Teachers start as exact copies of the students (encoder and head)."""
        if next(self.parameters()).device.type == "meta":
            return
        for s, t in ((self.video_student, self.video_teacher), (self.audio_student, self.audio_teacher)):
            for ps, pt in zip(s.parameters(), t.parameters()):
                pt.copy_(ps)

    @torch.no_grad()
    def update_teachers(self, momentum: float, audio_momentum: float | None = None) -> None:
        """EMA theta_t <- m theta_t + (1 - m) theta_s for encoder and head, per modality (a foreach lerp).

        Mirrors the official loop: video pairs first, then audio pairs. In MATS the shared teacher blocks
        are in both lists, so with `mats_double_ema` (official) they move twice per step (effective
        momentum ~ m_v * m_a); without it the audio pass skips tensors the video pass already updated.
        Decoders are never EMA'd; students are never touched.
        """
        am = momentum if audio_momentum is None else audio_momentum
        done: set[int] = set()
        for (s, t), m in (
            ((self.video_student, self.video_teacher), momentum),
            ((self.audio_student, self.audio_teacher), am),
        ):
            pairs = [
                (pt, ps)
                for ps, pt in zip(s.parameters(), t.parameters())
                if self.cfg.mats_double_ema or id(pt) not in done
            ]
            done.update(id(pt) for pt, _ in pairs)
            if not pairs:
                continue
            teacher, student = [p for p, _ in pairs], [p.detach() for _, p in pairs]
            # t + (1 - m)(s - t) = m t + (1 - m) s in one pass over the teachers (mul_ then add_ took two: ~35 ms
            # a step on the base model's ~190M teacher values); m = 1 leaves them bit-for-bit unchanged
            torch._foreach_lerp_(teacher, student, 1 - m)

    # ------------------------------------------------------------------ helpers for the training step
    def student_parameters_for_clipping(self) -> list[nn.Parameter]:
        """Student encoders + heads (not decoders): the tensors the official per-tensor clip touches."""
        seen, out = set(), []
        for branch in (self.video_student, self.audio_student):
            for p in branch.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    def teacher_temperatures(self, epoch: int) -> tuple[float, float]:
        c = self.cfg
        tv = teacher_temperature(
            epoch, c.video_warmup_teacher_temp, c.video_teacher_temp, c.warmup_teacher_temp_epochs, c.epochs
        )
        ta = teacher_temperature(
            epoch, c.audio_warmup_teacher_temp, c.audio_teacher_temp, c.warmup_teacher_temp_epochs, c.epochs
        )
        return tv, ta

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict, epoch: int = 0, generator: torch.Generator | None = None) -> dict:
        c = self.cfg
        video, audio = batch["video"], batch["audio"]
        v_local, a_local = list(batch["video_local"]), list(batch["audio_local"])

        # students: the masked global view (MAE path, reused for distillation) and the local views
        venc, aenc = self.video_student.encoder, self.audio_student.encoder
        v_seq, v_tgt, v_mask, v_ids = venc.masked_sequence(
            video, c.video_mask_ratio, batch.get("video_noise"), generator
        )
        a_seq, a_tgt, a_mask, a_ids = aenc.masked_sequence(
            audio, c.audio_mask_ratio, batch.get("audio_noise"), generator
        )
        v_seqs = [v_seq, venc.sequence(torch.cat(v_local))]
        a_seqs = [a_seq, aenc.sequence(torch.cat(a_local))]
        # one packed pass per block stack (both modalities at once when MAS/MATS share the blocks)
        if venc.blocks is aenc.blocks:
            v_g, v_l, a_g, a_l = run_blocks(venc.blocks, v_seqs + a_seqs)
        else:
            (v_g, v_l), (a_g, a_l) = run_blocks(venc.blocks, v_seqs), run_blocks(aenc.blocks, a_seqs)
        v_lat, a_lat = venc.norm(v_g), aenc.norm(a_g)
        rec_v = losses.reconstruction_loss(self.video_decoder(v_lat, v_ids), v_tgt, v_mask, c.norm_pix_loss)
        rec_a = losses.reconstruction_loss(self.audio_decoder(a_lat, a_ids), a_tgt, a_mask, c.norm_pix_loss)

        # teachers: official feeds views[1], the first *local* view (flag: "global")
        with torch.no_grad():
            tv_in, ta_in = (v_local[0], a_local[0]) if c.teacher_input == "local" else (video, audio)
            tv_tok, tv_attn = self.video_teacher.encoder.forward_with_cls_attention(tv_in)
            ta_tok, ta_attn = self.audio_teacher.encoder.forward_with_cls_attention(ta_in)
            fv, fa = losses.refine(tv_tok[:, 1:], ta_tok[:, 1:], tv_attn, ta_attn, c.refine_mode)
            z_tv = self.video_teacher.head(fv.mean(dim=1))
            z_ta = self.audio_teacher.head(fa.mean(dim=1))
            mmd_teacher = losses.mmd(z_tv, z_ta, c.mmd_gammas, c.mmd_distance)

        # head input: mean of the patch tokens (CLS excluded) of [global (visible only); local_1..L]
        z_sv = self.video_student.head(torch.cat([v_lat[:, 1:].mean(1), venc.norm(v_l)[:, 1:].mean(1)]))
        z_sa = self.audio_student.head(torch.cat([a_lat[:, 1:].mean(1), aenc.norm(a_l)[:, 1:].mean(1)]))

        mmd_student = losses.mmd(z_sv, z_sa, c.mmd_gammas, c.mmd_distance)
        # official L_da averages in the (constant) teacher term, halving the student term's gradient
        da = (mmd_student + mmd_teacher) / 2 if c.teacher_mmd == "logged" else mmd_student

        temp_tv, temp_ta = self.teacher_temperatures(epoch)
        at2vs_student_temp = c.audio_student_temp if c.at2vs_student_temp == "audio" else c.video_student_temp
        kd_vt2as = self.vt2as(z_sa, z_tv, c.audio_student_temp, temp_tv, 1 + len(a_local), 1)
        kd_at2vs = self.at2vs(z_sv, z_ta, at2vs_student_temp, temp_ta, 1 + len(v_local), 1)
        kd = (kd_vt2as + kd_at2vs) / 2
        rec = (rec_v + rec_a) / 2
        total = losses.total_loss(da, kd, rec, c.weight_da, c.weight_kd, c.weight_rec)
        return dict(
            rec_v=rec_v,
            rec_a=rec_a,
            rec=rec,
            kd_vt2as=kd_vt2as,
            kd_at2vs=kd_at2vs,
            kd=kd,
            mmd_student=mmd_student,
            mmd_teacher=mmd_teacher,
            da=da,
            total=total,
        )


def build(cfg: XKDConfig, device: str | torch.device | None = None) -> XKD:
    """Build the model; `device="meta"` allocates nothing (used for parameter counts)."""
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            return XKD(cfg, init=False)
    model = XKD(cfg)
    return model.to(device) if device is not None else model


def clone_encoder(encoder: Encoder) -> Encoder:
    """A standalone copy (own blocks) of an encoder, e.g. to export a MAS student per modality."""
    return copy.deepcopy(encoder)
