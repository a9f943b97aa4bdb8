"""Label-free checkpoint scoring on clips held out from pretraining (the official code picked models on test).

Every kept checkpoint x {student, EMA teacher} is scored with the full XKD objective (L_da + L_kd + 5 L_rec) / 7
on fixed, seeded views and masks of the held-out clips. The teacher is scored by putting its encoders and heads in
the students' place (the MAE decoders and DINO centres stay those of the checkpoint). Lower is better.
"""

from __future__ import annotations

from pathlib import Path

import torch

import model as xkd_model
from xkd.data.photometric import finish_batch
from xkd.data.pretrain_dataset import PretrainDataset, ViewConfig, collate, sample_seed
from xkd.log import progress
from xkd.train.config import PretrainConfig

RULE = "min held-out XKD loss (label-free), student and EMA teacher, every kept checkpoint"


def use_teacher_as_student(net: xkd_model.XKD) -> None:
    with torch.no_grad():
        for m in ("video", "audio"):
            student, teacher = getattr(net, f"{m}_student"), getattr(net, f"{m}_teacher")
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                ps.copy_(pt)


@torch.no_grad()
def validation_loss(net: xkd_model.XKD, batches: list[dict], seed: int) -> float:
    """Mean total loss over fixed batches; the masks are seeded per batch, the DINO centres restored."""
    net.eval()
    centres = {k: v.clone() for k, v in net.named_buffers()}
    total = 0.0
    for i, batch in enumerate(batches):
        g = torch.Generator().manual_seed(sample_seed(seed, 2**31, i))  # a stream training never uses
        total += float(net(batch, epoch=net.cfg.epochs - 1, generator=g)["total"])
    for k, v in net.named_buffers():  # scoring must not move the centres the next candidate starts from
        v.copy_(centres[k])
    return total / len(batches)


def held_out_batches(cfg: PretrainConfig, clips: str, spectrograms: str | None, held: list[str], batch_size: int):
    """The held-out clips as fixed batches, viewed exactly as pretraining views its clips (seeded per position)."""
    data = PretrainDataset(clips, spectrograms, ViewConfig.from_config(cfg), seed=cfg.train.seed, clip_ids=held)
    samples = [data[(i, 0, i)] for i in range(len(data))]
    return [finish_batch(collate(samples[i : i + batch_size])) for i in range(0, len(samples), batch_size)]


def score_checkpoints(cfg: PretrainConfig, checkpoints: list[Path], batches: list[dict]) -> list[dict]:
    """[{checkpoint, step, role, val_loss}] for every checkpoint directory x {student, teacher}."""
    candidates = []
    for ck in progress(checkpoints, desc="score checkpoints", unit="ckpt"):
        step = int(ck.name.split("-")[1])
        for role in ("student", "teacher"):
            net = xkd_model.build(cfg.model)
            xkd_model.load_state(net, ck / "model.safetensors")
            if role == "teacher":
                use_teacher_as_student(net)
            loss = validation_loss(net, batches, cfg.train.seed)
            candidates.append({"checkpoint": ck.name, "step": step, "role": role, "val_loss": loss})
    return candidates


def winner(candidates: list[dict]) -> dict:
    """Lowest loss; ties go to the later step, then the student."""
    return min(candidates, key=lambda c: (c["val_loss"], -c["step"], c["role"]))
