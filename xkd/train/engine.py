"""The XKD training engine: one optimiser step (`train_step`), the schedules, and the resumable loop.

`train_step` is the public unit a user or a test can call on its own:

    import model, torch
    from xkd.train.engine import train_step
    net = model.build(model.preset("tiny", "xkd"))
    opt = model.build_optimizer(net)
    out = train_step(net, opt, [batch_a, batch_b], lr=1e-4, weight_decay=0.05, ema_momentum=0.997, clip_grad=0.3)
    out.terms["total"], out.grad_norm

`Trainer` wraps it with what `components.pretrain` needs: a resumable data stream, per-step seeds,
metrics, atomic checkpoints. Resume is bit-exact on CPU because every random choice is seeded from
(seed, epoch, position) for the views and (seed, step, rank, micro-step) for the masks.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import model as xkd_model
from xkd.data.photometric import finish_batch
from xkd.data.pretrain_dataset import sample_seed
from xkd.errors import UsageError
from xkd.log import progress
from xkd.train import checkpoint
from xkd.train.batches import batch_stream
from xkd.train.config import PretrainConfig
from xkd.train.distributed import Distributed

LOSS_TERMS = ("total", "rec_v", "rec_a", "rec", "kd_vt2as", "kd_at2vs", "kd", "mmd_student", "mmd_teacher", "da")


@dataclass(frozen=True)
class StepResult:
    terms: dict[str, float]  # every LOSS_TERMS value, averaged over the micro-batches (and the ranks)
    grad_norm: float  # L2 norm of the per-tensor student gradient norms, before clipping


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Iterable[dict],
    *,
    lr: float,
    weight_decay: float,
    ema_momentum: float,
    clip_grad: float,
    epoch: int = 0,
    generators: Sequence[torch.Generator | None] | None = None,
    accumulate: int | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    step: int = 0,
) -> StepResult:
    """One XKD optimiser step over `micro_batches`, in the official order.

    For each micro-batch: forward, backward of total / n (gradients accumulate; under DDP only the last
    micro-batch all-reduces). Then: the averaged loss terms are checked (any non-finite term raises
    FloatingPointError naming it, before the weights move); every param group gets `lr`, group 0 (biases,
    norms, tokens) weight decay 0 and the others `weight_decay`; fp16 gradients are unscaled; each
    student encoder/head gradient is clipped to L2 norm <= `clip_grad` on its own (DINO's per-tensor clip);
    the optimiser steps, gradients are cleared, and the teachers move by EMA with `ema_momentum`.

    model: a `model.XKD` (or a DistributedDataParallel around one). optimizer: from `model.build_optimizer`.
    micro_batches: model-input dicts already on the model's device (`xkd.data.photometric.finish_batch`);
        a list, or a lazy iterable of `accumulate` items so only one micro-batch is resident at a time.
    epoch: the schedule epoch the teacher temperatures are read at.
    generators: one generator per micro-batch for the token masks (None: the global RNG).
    autocast / scaler: mixed precision (`xkd.train.distributed.autocast_and_scaler`).
    reduce: averages the terms across processes (`Distributed.mean`); step: named in errors only.
    """
    n = len(micro_batches) if accumulate is None else accumulate
    if n < 1:
        raise ValueError("train_step needs at least one micro-batch")
    if generators is not None and len(generators) != n:
        raise ValueError(f"{len(generators)} generators for {n} micro-batches")
    net = model.module if isinstance(model, DistributedDataParallel) else model
    terms, seen = torch.zeros(len(LOSS_TERMS), dtype=torch.float64), 0
    for micro, inputs in enumerate(micro_batches):
        if micro >= n:
            raise ValueError(f"more than accumulate={n} micro-batches")
        # DDP: all-reduce the gradients once, on the last micro-batch
        sync = micro == n - 1 or not isinstance(model, DistributedDataParallel)
        with contextlib.nullcontext() if sync else model.no_sync(), autocast():
            losses = model(inputs, epoch=epoch, generator=None if generators is None else generators[micro])
        loss = losses["total"] / n
        (scaler.scale(loss) if scaler else loss).backward()
        terms += torch.stack([losses[k].detach().double().cpu() for k in LOSS_TERMS]) / n
        seen += 1
    if seen != n:
        raise ValueError(f"{seen} micro-batches for accumulate={n}")
    if reduce is not None:
        terms = reduce(terms)
    values = terms.tolist()
    bad = [k for k, v in zip(LOSS_TERMS, values) if not torch.isfinite(torch.tensor(v))]
    if bad:
        raise FloatingPointError(
            f"non-finite loss at step {step}: {', '.join(bad)} ({dict(zip(LOSS_TERMS, values))}); stopping"
        )
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = lr
        group["weight_decay"] = 0.0 if i == 0 else weight_decay
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = xkd_model.clip_grad_per_tensor_(net.student_parameters_for_clipping(), clip_grad).norm().item()
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    net.update_teachers(ema_momentum)
    return StepResult(dict(zip(LOSS_TERMS, values)), grad_norm)


@dataclass(frozen=True)
class Schedule:
    total: int  # optimiser steps
    warmup: int
    base_lr: float
    effective_batch: int
    lrs: np.ndarray  # per step
    emas: np.ndarray  # teacher momentum per step

    @classmethod
    def plan(cls, cfg: PretrainConfig, train_clips: int, samples_per_rank: int, world: int) -> Schedule:
        """The run's length and per-step lr / EMA momentum; a data set too small for one step is a UsageError."""
        t = cfg.train
        batches_per_epoch = samples_per_rank // t.batch_size
        if batches_per_epoch < t.accumulate:
            raise UsageError(
                f"{train_clips} training clips over {world} process(es) give {batches_per_epoch} batches "
                f"of {t.batch_size} per epoch; need at least train.accumulate={t.accumulate}"
            )
        total = t.max_steps or cfg.model.epochs * (batches_per_epoch // t.accumulate)
        eff_batch = t.batch_size * t.accumulate * world
        base_lr = cfg.model.lr * (eff_batch / 256 if t.lr_scaling == "linear" else 1.0)
        # --max-steps N makes N the schedules' length, keeping the warm-up fraction (30 / 800 epochs)
        warmup = round(total * cfg.model.warmup_epochs / cfg.model.epochs)
        lrs = xkd_model.cosine_schedule(base_lr, cfg.model.min_lr, total, 1, warmup)
        emas = xkd_model.ema_schedule(total, 1, cfg.model.ema_base, cfg.model.ema_final)
        return cls(total, warmup, base_lr, eff_batch, lrs, emas)

    def params(self) -> dict:
        """The derived values a run logs as MLflow params (`derived.*`)."""
        return {
            "effective_batch": self.effective_batch,
            "base_lr": self.base_lr,
            "total_steps": self.total,
            "warmup_steps": self.warmup,
        }


def resume(out: Path, net: nn.Module, optimizer, scaler, ddp: Distributed) -> dict:
    """Load the newest complete checkpoint in `out` (weights, optimiser, scaler, global RNG states) and
    return its trainer state; a fresh run starts at step 0 of epoch 0."""
    if ddp.main:
        checkpoint.remove_partial(out)  # a write killed between its temp dir and the rename
    ddp.barrier()
    trainer = checkpoint.load_latest(out, net) or {"step": 0, "epoch": 0, "batch_in_epoch": 0}
    if "optimizer" in trainer:
        optimizer.load_state_dict(trainer["optimizer"])
        if scaler is not None and "scaler" in trainer:
            scaler.load_state_dict(trainer["scaler"])
    return trainer


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint a resumed run restarts from."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


class Trainer:
    """The pretraining loop around `train_step`: batches, seeds, metrics (rank 0), checkpoints (rank 0)."""

    def __init__(
        self,
        cfg: PretrainConfig,
        ddp: Distributed,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
        scaler: torch.amp.GradScaler | None = None,
    ):
        self.cfg, self.ddp, self.net, self.opt, self.schedule = cfg, ddp, net, optimizer, schedule
        self.autocast, self.scaler = autocast, scaler
        self.model = DistributedDataParallel(net) if ddp.world > 1 else net

    def _micro_batches(self, stream: Iterator, position: dict) -> Iterator[dict]:
        """`accumulate` finished batches, read one at a time; records the data position and the
        padded / skipped counts of what was read."""
        for _ in range(self.cfg.train.accumulate):
            position["epoch"], position["batch_in_epoch"], batch = next(stream)
            position["flags"] += torch.tensor(
                [batch["padded_video"].sum(), batch["padded_audio"].sum(), batch["skipped"]]
            )
            yield finish_batch(batch, self.ddp.device)

    def step(self, stream: Iterator, step: int, position: dict) -> StepResult:
        t, s = self.cfg.train, self.schedule
        seeds = [sample_seed(t.seed, step, self.ddp.rank * t.accumulate + m) for m in range(t.accumulate)]
        return train_step(
            self.model,
            self.opt,
            self._micro_batches(stream, position),
            lr=float(s.lrs[step]),
            weight_decay=self.cfg.model.weight_decay,
            ema_momentum=float(s.emas[step]),
            clip_grad=self.cfg.model.clip_grad,
            epoch=step * self.cfg.model.epochs // s.total,
            generators=[torch.Generator(self.ddp.device).manual_seed(x) for x in seeds],
            accumulate=t.accumulate,
            autocast=self.autocast,
            scaler=self.scaler,
            reduce=self.ddp.mean,
            step=step,
        )

    def fit(self, data, sampler, out: Path, trainer: dict, logger, run_state: dict) -> int:
        """Train from `trainer`'s position to the schedule's end; returns the final step. `logger` (rank 0)
        takes `log(step, **metrics)` / `flush()` (and `persist()` if it has one, called before each checkpoint
        is written); `run_state` holds the config hash and MLflow run id."""
        cfg, t, total = self.cfg, self.cfg.train, self.schedule.total
        step, position = trainer["step"], {"epoch": trainer["epoch"], "batch_in_epoch": trainer["batch_in_epoch"]}
        main = self.ddp.main
        bar = progress(total=total, initial=step, desc="pretrain", unit="step", disable=not main)
        last_ckpt, tick = time.time(), time.time()
        stream = batch_stream(data, sampler, t.batch_size, t.workers, position["epoch"], position["batch_in_epoch"])
        while step < total:
            position["flags"] = torch.zeros(3)
            result = self.step(stream, step, position)
            step += 1
            checkpoint.fault_point("after_step", step)
            if t.check_replicas_every and step % t.check_replicas_every == 0 and not self.ddp.replicas_agree(self.net):
                raise RuntimeError(f"replicas diverged at step {step}: ranks hold different weights or centres")
            if not main:
                continue
            now = time.time()
            metrics = self._metrics(result, step, position["flags"], now - tick)
            tick = now
            if step % t.log_every == 0 or step == total:
                logger.log(step, **metrics)
                with open(out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps({"step": step, **metrics}) + "\n")
            # refresh=False: the bar redraws on its own interval (a forced redraw each step floods a log file)
            bar.set_postfix(loss=f"{metrics['total']:.3f}", clips_s=f"{metrics['clips_per_s']:.1f}", refresh=False)
            bar.update()
            every = cfg.checkpoint
            if step % every.every_steps == 0 or step == total or now - last_ckpt >= 60 * every.every_minutes:
                # The checkpoint never waits on the tracking store: unsent metrics go to disk first (so a kill
                # during the save loses none), the checkpoint is written, then a bounded flush is tried
                # (`MetricLogger(pending=...)`: on failure training goes on and the metrics stay pending).
                if hasattr(logger, "persist"):
                    logger.persist()
                self._save(out, step, position, run_state)
                logger.flush()
                last_ckpt = now
        bar.close()
        return step

    def _metrics(self, result: StepResult, step: int, flags: torch.Tensor, seconds: float) -> dict:
        s = self.schedule
        tv, ta = self.net.teacher_temperatures(step * self.cfg.model.epochs // s.total)
        return {
            **result.terms,
            "lr": float(s.lrs[step - 1]),
            "ema_momentum": float(s.emas[step - 1]),
            "teacher_temp_video": tv,
            "teacher_temp_audio": ta,
            "grad_norm": result.grad_norm,
            "clips_per_s": s.effective_batch / max(seconds, 1e-9),
            "padded_video": float(flags[0]),
            "padded_audio": float(flags[1]),
            "skipped": float(flags[2]),
        }

    def _save(self, out: Path, step: int, position: dict, run_state: dict) -> None:
        trainer = {
            "step": step,
            "epoch": position["epoch"],
            "batch_in_epoch": position["batch_in_epoch"] + 1,
            "optimizer": self.opt.state_dict(),
            "config_hash": run_state["config_hash"],
            "mlflow_run_id": run_state["mlflow_run_id"],
            **({"scaler": self.scaler.state_dict()} if self.scaler else {}),
        }
        checkpoint.save(out, self.net, trainer, self.cfg.checkpoint.keep)
