"""End-to-end fine-tuning (docs/xkd_spec.md §5.3): the whole encoder + a new head, layer-wise lr decay, AdamW,
warm-up + cosine, label smoothing and mixup; the epoch is chosen on the validation carve (the official
code picked the best test epoch: reported beside as paper-style).

Training views per epoch (fresh draws): audio - a random 4 s window, gain jitter, two frequency masks
(width <= 10) and two time masks (width <= 20) (SpecAugment-style), BYOL-A random resize crop; video - a
random 4 s window, RandomResizedCrop (scale 0.2-0.766), flip, colour jitter, random erasing (p 0.25).
Deviations (documented in the README): VideoMAE's RandAugment is replaced by the colour jitter, the audio
time-warp is left out, and cutmix is not applied (mixup only).
Test: `test_clips` uniformly spaced windows (x `test_crops`), softmax averaged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

import model as xkd_model
from xkd.data import views
from xkd.data.cache import CacheReader
from xkd.data.pretrain_dataset import sample_seed
from xkd.evaluation.protocols import topk
from xkd.evaluation.views import EvalViews, ViewSettings, encoder_geometry
from xkd.log import progress


def _spec_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    x = x.clone()
    for axis, width, n in ((-2, 10, 2), (-1, 20, 2)):
        size = x.shape[axis]
        for _ in range(n):
            w = views.randint(g, 0, width)
            s = views.randint(g, 0, size - w)
            idx = [slice(None)] * x.dim()
            idx[axis] = slice(s, s + w)
            x[tuple(idx)] = 0.0  # the mean level in normalised units
    return x


def _train_view(modality: str, ev: EvalViews, cid: str, g: torch.Generator, s: dict) -> torch.Tensor:
    if modality == "audio":
        spec = torch.from_numpy(ev.specs.spectrogram(cid))
        (win,) = ev.windows(cid, g, 1)
        x = views.audio_global(g, None, spec, win.sample0, (0.8, 1.2), geom=ev.geometry)
        return views.byol_rrc(_spec_augment(x, g)[0], g)[None]
    vs = ViewSettings.from_settings(s, train_views=1, train_scale=(0.2, 0.766), grey_p=0.0)
    x = ev.views(cid, "video", vs, g)[0]
    if views.uniform(g, 0, 1) < 0.25:  # random erasing, pixel mode
        c, frames, h, w = x.shape
        eh, ew = views.randint(g, h // 8, h // 2), views.randint(g, w // 8, w // 2)
        t, l = views.randint(g, 0, h - eh), views.randint(g, 0, w - ew)
        x[..., t : t + eh, l : l + ew] = torch.randn(c, frames, eh, ew, generator=g)  # same box in every frame
    return x


def _llrd_groups(encoder, head, lr: float, decay: float, weight_decay: float) -> list[dict]:
    """Block i of D gets lr * decay^(D - i); embeddings decay^(D + 1); the final norm and head the full lr."""
    depth = len(encoder.blocks)
    groups = []
    for name, p in encoder.named_parameters():
        layer = (
            int(name.split(".")[1]) + 1 if name.startswith("blocks.") else (depth + 1 if name.startswith("norm") else 0)
        )
        scale = decay ** (depth + 1 - layer)
        groups.append({"params": [p], "lr_scale": scale, "weight_decay": 0.0 if p.ndim == 1 else weight_decay})
    groups += [{"params": list(head.parameters()), "lr_scale": 1.0, "weight_decay": weight_decay}]
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    return groups


class Classifier(torch.nn.Module):
    def __init__(self, encoder, classes: int, dropout: float, l2_feature: bool):
        super().__init__()
        self.encoder, self.l2 = encoder, l2_feature
        self.head = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(encoder.cfg.width, classes))

    def forward(self, x):
        f = self.encoder.features(x)
        return self.head(F.normalize(f, dim=-1) if self.l2 else f)


def finetune(
    bundle, role: str, modality: str, reader: CacheReader, train, test, fit_idx, val_idx, s: dict, seed: int = 0
) -> dict:
    """train/test: lists of eval_datasets.Sample. Returns the fold result (val-selected + paper-style)."""
    torch.manual_seed(seed)
    classes = max(x.label for x in train + test) + 1
    enc = xkd_model.load_encoder(f"{bundle}/{modality}_{role}.safetensors")
    net = Classifier(enc, classes, s.get("dropout", 0.5), l2_feature=modality == "audio")
    opt = torch.optim.AdamW(
        _llrd_groups(enc, net.head, float(s["lr"]), s.get("layer_decay", 0.75), float(s.get("weight_decay", 0.05))),
        betas=(0.9, 0.999),
    )
    fit = [train[i] for i in fit_idx]
    batch, epochs, warm = s.get("batch_size", 16), s.get("epochs", 10), s.get("warmup_epochs", 1)
    steps_per_epoch = math.ceil(len(fit) / batch)
    total = epochs * steps_per_epoch
    # the evaluation views (one implementation) in the encoder's geometry; a cache at a foreign fps / sample rate
    # is refused here
    ev = EvalViews(
        reader if modality == "video" else None, reader if modality == "audio" else None, encoder_geometry(bundle)
    )
    vs = ViewSettings.from_settings(s)
    test_views = {x.clip_id: ev.views(x.clip_id, modality, vs) for x in [train[i] for i in val_idx] + test}
    history, step = [], 0
    for epoch in range(1, epochs + 1):
        net.train()
        g = torch.Generator().manual_seed(sample_seed(seed, epoch, 0))
        order = torch.randperm(len(fit), generator=g).tolist()
        for b in progress(range(0, len(fit), batch), desc=f"finetune epoch {epoch}/{epochs}", leave=False):
            items = [fit[i] for i in order[b : b + batch]]
            x = torch.stack([_train_view(modality, ev, it.clip_id, g, s) for it in items])
            y = F.one_hot(torch.tensor([it.label for it in items]), classes).float()
            y = y * (1 - s.get("label_smoothing", 0.1)) + s.get("label_smoothing", 0.1) / classes
            lam = float(np.random.default_rng(step).beta(s["mixup"], s["mixup"])) if s.get("mixup") else 1.0
            x, y = lam * x + (1 - lam) * x.flip(0), lam * y + (1 - lam) * y.flip(0)
            lr_now = _lr(step, total, warm * steps_per_epoch, float(s["lr"]), float(s.get("min_lr", 1e-6)))
            for group in opt.param_groups:
                group["lr"] = lr_now * group["lr_scale"]
            loss = torch.sum(-y * F.log_softmax(net(x), -1), -1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        history.append(
            {
                "epoch": epoch,
                "val": _accuracy(net, [train[i] for i in val_idx], test_views),
                "test": _accuracy(net, test, test_views),
            }
        )
    best_val = max(history, key=lambda h: (h["val"], -h["epoch"]))
    best_test = max(history, key=lambda h: h["test"])
    return {
        "top1": best_val["test"],
        "hparams": {"epoch": best_val["epoch"], "lr": float(s["lr"])},
        "val_top1_by_epoch": [h["val"] for h in history],
        "paper_style": {"top1": best_test["test"], "hparams": {"epoch": best_test["epoch"]}},
    }


def _lr(step: int, total: int, warmup: int, base: float, final: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def _accuracy(net, samples, test_views) -> float:
    if not samples:
        return 0.0
    net.eval()
    scores = np.stack([torch.softmax(net(test_views[x.clip_id]), -1).mean(0).numpy() for x in samples])
    return topk(scores, np.array([x.label for x in samples]), 1)
