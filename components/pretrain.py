"""XKD pretraining: one process or `torchrun --nproc_per_node N` (env:// rendezvous, also in a TrainJob).

    python -m components.pretrain --config configs/pretrain/<name>.yaml --clips DIR --spectrograms DIR \
        --output DIR [--max-steps N] [--set section.key=value ...] [--mlflow-parent RUN_ID]

Resumes automatically from the newest checkpoint in --output when the stored config hash matches (one
clear error otherwise); a run killed at any moment and restarted with the same command ends with the
same weights, bit for bit, as an uninterrupted one (CPU): data views are seeded per (seed, epoch, sample
position), masks per (seed, step, rank, micro-step), and checkpoints are atomic.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

import model as xkd_model
from xkd.data.photometric import finish_batch
from xkd.data.pretrain_dataset import EpochSampler, PretrainDataset, ViewConfig, collate, sample_seed
from xkd.errors import UsageError, cli
from xkd.tracking import lineage
from xkd.tracking import runs as tracking
from xkd.tracking.plots import plot_loss_curves
from xkd.train import checkpoint
from xkd.train.config import PretrainConfig, load_config

LOSS_TERMS = ("total", "rec_v", "rec_a", "rec", "kd_vt2as", "kd_at2vs", "kd", "mmd_student", "mmd_teacher", "da")


def holdout_split(ids: list[str], fraction: float, minimum: int) -> tuple[list[str], list[str]]:
    """Deterministic (train, held-out) split by a hash of the clip id (one id per source video, so no
    source is on both sides). At least `minimum` clips are held out when fraction > 0."""
    if fraction <= 0:
        return list(ids), []
    ranked = sorted(ids, key=lambda c: hashlib.sha256(c.encode()).hexdigest())
    k = min(len(ids) - 1, max(minimum, round(fraction * len(ids))))
    held = set(ranked[:k])
    return [c for c in ids if c not in held], [c for c in ids if c in held]


class Distributed:
    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{local}" if cuda else "cpu")
        if self.world > 1 and not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        return values

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def replicas_agree(self, net: torch.nn.Module) -> bool:
        """Every rank holds the same weights and buffers (DINO centres included): compare per-tensor
        float64 sums across ranks. Catches a desynchronised replica the step it happens."""
        if self.world == 1:
            return True
        sums = torch.stack([t.detach().double().sum() for t in net.state_dict().values()]).to(self.device)
        gathered = [torch.empty_like(sums) for _ in range(self.world)]
        dist.all_gather(gathered, sums)
        return all(torch.equal(gathered[0], g) for g in gathered[1:])


def autocast_and_scaler(cfg: PretrainConfig, device: torch.device):
    p = cfg.train.precision
    if p == "auto":
        p = {"float16": "fp16", "bfloat16": "bf16"}[cfg.model.amp_dtype] if device.type == "cuda" else "fp32"
    if p == "fp32":
        return contextlib.nullcontext, None, p
    dtype = torch.float16 if p == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type) if p == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler, p


def prepare_output(output: Path, cfg: PretrainConfig, main: bool) -> dict:
    """Refuse a config that differs from the one a previous run left in `output`."""
    run_file = output / "run.json"
    digest = cfg.resume_hash()
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if previous["config_hash"] != digest:
            raise UsageError(
                f"{output} holds a run with another config (hash {previous['config_hash']} != {digest}); "
                "use the same config to resume, or a new --output"
            )
        return previous
    state = {"config_hash": digest}
    if main:
        output.mkdir(parents=True, exist_ok=True)
        (output / "config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False))
        run_file.write_text(json.dumps(state, indent=2) + "\n")
    return state


def run(
    config: str,
    clips: str,
    spectrograms: str | None,
    output: str,
    *,
    max_steps: int | None = None,
    overrides: list[str] = (),
    mlflow_parent: str | None = None,
) -> Path:
    """Pretrain; returns the final encoder bundle directory (`output/final`)."""
    overrides = list(overrides) + ([f"train.max_steps={max_steps}"] if max_steps is not None else [])
    cfg = load_config(config, overrides)
    ddp = Distributed()
    out = Path(output)
    state = prepare_output(out, cfg, ddp.main)
    ddp.barrier()
    torch.manual_seed(cfg.train.seed)
    net = xkd_model.build(cfg.model).to(ddp.device)  # same seed: the same initial weights on every rank
    opt = xkd_model.build_optimizer(
        net, cfg.model.lr, cfg.model.weight_decay, cfg.model.betas, cfg.model.decay_pos_tokens
    )
    autocast, scaler, precision = autocast_and_scaler(cfg, ddp.device)

    views = ViewConfig(
        video_local_views=cfg.model.video_local_views,
        audio_local_views=cfg.model.audio_local_views,
        audio_source=cfg.data.audio_source,
        blur_sigma=cfg.data.blur_sigma,
        on_unreadable=cfg.data.on_unreadable,
    )
    full = PretrainDataset(clips, spectrograms, views, seed=cfg.train.seed)
    train_ids, held_ids = holdout_split(full.ids, cfg.data.holdout_fraction, cfg.data.holdout_min)
    data = PretrainDataset(clips, spectrograms, views, seed=cfg.train.seed, clip_ids=train_ids)
    sampler = EpochSampler(len(data), ddp.world, ddp.rank, seed=cfg.train.seed)
    t = cfg.train
    batches_per_epoch = len(sampler) // t.batch_size
    if batches_per_epoch < t.accumulate:
        raise UsageError(
            f"{len(data)} training clips over {ddp.world} process(es) give {batches_per_epoch} batches "
            f"of {t.batch_size} per epoch; need at least train.accumulate={t.accumulate}"
        )
    steps_per_epoch = batches_per_epoch // t.accumulate
    total = t.max_steps or cfg.model.epochs * steps_per_epoch
    eff_batch = t.batch_size * t.accumulate * ddp.world
    base_lr = cfg.model.lr * (eff_batch / 256 if t.lr_scaling == "linear" else 1.0)
    # --max-steps N makes N the schedules' length, keeping the warm-up fraction (30 / 800 epochs)
    warmup = round(total * cfg.model.warmup_epochs / cfg.model.epochs)
    lrs = xkd_model.cosine_schedule(base_lr, cfg.model.min_lr, total, 1, warmup)
    emas = xkd_model.ema_schedule(total, 1, cfg.model.ema_base, cfg.model.ema_final)

    if ddp.main:
        checkpoint.remove_partial(out)  # a write killed between its temp dir and the rename
    ddp.barrier()
    trainer = checkpoint.load_latest(out, net) or {"step": 0, "epoch": 0, "batch_in_epoch": 0}
    if "optimizer" in trainer:
        opt.load_state_dict(trainer["optimizer"])
        if scaler is not None and "scaler" in trainer:
            scaler.load_state_dict(trainer["scaler"])
    step, epoch, batch_in_epoch = trainer["step"], trainer["epoch"], trainer["batch_in_epoch"]
    if ddp.main:
        (out / "holdout.json").write_text(
            json.dumps({"train": train_ids, "holdout": held_ids, "excluded": full.excluded}, indent=2) + "\n"
        )

    model = torch.nn.parallel.DistributedDataParallel(net) if ddp.world > 1 else net
    clip_params = net.student_parameters_for_clipping()
    run_id = trainer.get("mlflow_run_id") or state.get("mlflow_run_id")
    if ddp.main:
        tracking.connect()  # an unreachable store is one clear error now, not lost metrics later
    parent = tracking.parent_run_id(create=True, cli_value=mlflow_parent) if ddp.main else None
    run_ctx = tracking.step_run("pretrain", parent, run_id=run_id, log_system_metrics=ddp.device.type == "cuda")
    with run_ctx if ddp.main else contextlib.nullcontext() as run:
        logger = None
        if ddp.main:
            if run_id is None:
                tracking.log_params_flat(
                    {
                        **cfg.to_dict(),
                        "derived": {
                            "world_size": ddp.world,
                            "effective_batch": eff_batch,
                            "base_lr": base_lr,
                            "total_steps": total,
                            "warmup_steps": warmup,
                            "precision": precision,
                            "train_clips": len(data),
                            "holdout_clips": len(held_ids),
                            "excluded_no_audio": len(full.excluded["no_audio"]),
                        },
                    }
                )
                caches = {"clips": clips, **({"spectrograms": spectrograms} if spectrograms else {})}
                lineage.log_lineage(lineage.collect(caches=caches))
            state["mlflow_run_id"] = run.info.run_id
            (out / "run.json").write_text(json.dumps(state, indent=2) + "\n")
            logger = tracking.MetricLogger(run.info.run_id, check_finite=False)
            _truncate_metrics(out / "metrics.jsonl", step)

        bar = tqdm(total=total, initial=step, desc="pretrain", unit="step", disable=not ddp.main, dynamic_ncols=True)
        last_ckpt, tick = time.time(), time.time()
        stream = _batches(data, sampler, t, epoch, batch_in_epoch)
        while step < total:
            terms, flags = torch.zeros(len(LOSS_TERMS), dtype=torch.float64), torch.zeros(3)
            for micro in range(t.accumulate):
                epoch, batch_in_epoch, batch = next(stream)
                inputs = finish_batch(batch, ddp.device)
                g = torch.Generator(ddp.device).manual_seed(sample_seed(t.seed, step, ddp.rank * t.accumulate + micro))
                sync = micro == t.accumulate - 1 or ddp.world == 1
                with contextlib.nullcontext() if sync else model.no_sync(), autocast():
                    losses = model(inputs, epoch=step * cfg.model.epochs // total, generator=g)
                loss = losses["total"] / t.accumulate
                (scaler.scale(loss) if scaler else loss).backward()
                terms += torch.stack([losses[k].detach().double().cpu() for k in LOSS_TERMS]) / t.accumulate
                flags += torch.tensor([batch["padded_video"].sum(), batch["padded_audio"].sum(), batch["skipped"]])
            terms = ddp.mean(terms)
            bad = [k for k, v in zip(LOSS_TERMS, terms.tolist()) if not torch.isfinite(torch.tensor(v))]
            if bad:
                raise FloatingPointError(
                    f"non-finite loss at step {step}: {', '.join(bad)} "
                    f"({dict(zip(LOSS_TERMS, terms.tolist()))}); stopping"
                )
            for i, group in enumerate(opt.param_groups):
                group["lr"] = float(lrs[step])
                group["weight_decay"] = 0.0 if i == 0 else cfg.model.weight_decay
            if scaler:
                scaler.unscale_(opt)
            grad_norm = xkd_model.clip_grad_per_tensor_(clip_params, cfg.model.clip_grad).norm().item()
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
            net.update_teachers(float(emas[step]))
            step += 1
            checkpoint.fault_point("after_step", step)
            if t.check_replicas_every and step % t.check_replicas_every == 0 and not ddp.replicas_agree(net):
                raise RuntimeError(f"replicas diverged at step {step}: ranks hold different weights or centres")

            if ddp.main:
                now = time.time()
                tv, ta = net.teacher_temperatures(step * cfg.model.epochs // total)
                metrics = {
                    **dict(zip(LOSS_TERMS, terms.tolist())),
                    "lr": float(lrs[step - 1]),
                    "ema_momentum": float(emas[step - 1]),
                    "teacher_temp_video": tv,
                    "teacher_temp_audio": ta,
                    "grad_norm": grad_norm,
                    "clips_per_s": eff_batch / max(now - tick, 1e-9),
                    "padded_video": float(flags[0]),
                    "padded_audio": float(flags[1]),
                    "skipped": float(flags[2]),
                }
                tick = now
                if step % t.log_every == 0 or step == total:
                    logger.log(step, **metrics)
                    with open(out / "metrics.jsonl", "a") as fh:
                        fh.write(json.dumps({"step": step, **metrics}) + "\n")
                bar.set_postfix(loss=f"{metrics['total']:.3f}", clips_s=f"{metrics['clips_per_s']:.1f}")
                bar.update()
                due = (
                    step % cfg.checkpoint.every_steps == 0
                    or step == total
                    or now - last_ckpt >= 60 * cfg.checkpoint.every_minutes
                )
                if due:
                    logger.flush()
                    checkpoint.save(
                        out,
                        net,
                        {
                            "step": step,
                            "epoch": epoch,
                            "batch_in_epoch": batch_in_epoch + 1,
                            "optimizer": opt.state_dict(),
                            "config_hash": state["config_hash"],
                            "mlflow_run_id": state["mlflow_run_id"],
                            **({"scaler": scaler.state_dict()} if scaler else {}),
                        },
                        cfg.checkpoint.keep,
                    )
                    last_ckpt = now
        bar.close()
        ddp.barrier()
        if ddp.main:
            logger.flush()
            final = out / "final"
            xkd_model.export_bundle(net, final, step=str(step))
            plot_loss_curves(out / "metrics.jsonl", out / "loss_curves.png")
            tracking.log_png(out / "loss_curves.png", "plots")
    return out / "final"


def _batches(data, sampler, t, epoch: int, start_batch: int):
    """Endless (epoch, batch index in epoch, batch) stream from a resumable position."""
    while True:
        sampler.set_epoch(epoch, start=start_batch * t.batch_size)
        loader = DataLoader(
            data,
            batch_size=t.batch_size,
            sampler=sampler,
            collate_fn=collate,
            drop_last=True,
            num_workers=t.workers,
            persistent_workers=False,
        )
        for i, batch in enumerate(loader, start=start_batch):
            yield epoch, i, batch
        epoch, start_batch = epoch + 1, 0


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint a resumed run restarts from."""
    if path.exists():
        lines = [l for l in path.read_text().splitlines() if l and json.loads(l)["step"] <= step]
        path.write_text("".join(l + "\n" for l in lines))


@cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m components.pretrain", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="YAML file or preset name under configs/pretrain/")
    ap.add_argument("--clips", required=True, help="clip cache directory")
    ap.add_argument("--spectrograms", default=None, help="spectrogram cache (needed for data.audio_source=spectrogram)")
    ap.add_argument("--output", required=True)
    ap.add_argument("--max-steps", type=int, default=None, help="schedule length in optimiser steps")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument(
        "--mlflow-parent",
        default=None,
        help="parent MLflow run id (else MLFLOW_PARENT_RUN_ID / outputs/mlflow_parent.json)",
    )
    args = ap.parse_args(argv)
    final = run(
        args.config,
        args.clips,
        args.spectrograms,
        args.output,
        max_steps=args.max_steps,
        overrides=args.overrides,
        mlflow_parent=args.mlflow_parent,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final encoder bundle: {final}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
