"""XKD pretraining: one process or `torchrun --nproc_per_node N` (env:// rendezvous, also in a TrainJob).

    python -m components.pretrain --config configs/pretrain/<name>.yaml --clips DIR --spectrograms DIR \
        --output DIR [--max-steps N] [--set section.key=value ...] [--on-new-config refuse|restart] \
        [--mlflow-parent RUN_ID]

Resumes automatically from the newest checkpoint in --output when the stored config hash matches (otherwise
one clear error, or with --on-new-config restart the old run is cleared and the log says what went; an output
without a checkpoint yet starts over with the new config); a run killed at any moment and restarted with the
same command ends with the same weights, bit for bit, as an uninterrupted one (CPU): data views are seeded
per (seed, epoch, sample position), masks per (seed, step, rank, micro-step), and checkpoints are atomic.
The step itself is `xkd.train.engine.train_step`; this module wires config -> data -> engine -> checkpoints
-> MLflow -> export.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from xkd.errors import MLFLOW_PARENT_HELP, cli, step_parser
from xkd.log import logger

log = logger(__name__)


def run(
    config: str,
    clips: str,
    spectrograms: str | None,
    output: str,
    *,
    max_steps: int | None = None,
    overrides: list[str] = (),
    mlflow_parent: str | None = None,
    on_new_config: str = "refuse",
) -> Path:
    """Pretrain; returns the final encoder bundle directory (`output/final`)."""
    import torch  # here, not at the top: `--help` loads no torch / mlflow

    import model as xkd_model
    from xkd.data.pretrain_dataset import EpochSampler
    from xkd.tracking import lineage
    from xkd.tracking import runs as tracking
    from xkd.tracking.plots import plot_loss_curves
    from xkd.train import checkpoint
    from xkd.train.config import check_caches, load_config
    from xkd.train.distributed import Distributed, autocast_and_scaler
    from xkd.train.engine import Schedule, Trainer, resume

    tracking.check_store()  # a dead or unsupported tracking store is one line now, before any work
    overrides = list(overrides) + ([f"train.max_steps={max_steps}"] if max_steps is not None else [])
    # Everything a user can get wrong is checked before --output is touched: the config, the output path,
    # the caches and whether they hold enough clips for one step.
    cfg = load_config(config, overrides)
    out = Path(output)
    checkpoint.check_output(out)
    check_caches(cfg, clips, spectrograms)
    ddp = Distributed()
    full, data, train_ids, held_ids = _datasets(cfg, clips, spectrograms)
    sampler = EpochSampler(len(data), ddp.world, ddp.rank, seed=cfg.train.seed)
    schedule = Schedule.plan(cfg, len(data), len(sampler), ddp.world)
    state = checkpoint.prepare_output(out, cfg, ddp.main, on_new_config)
    ddp.barrier()
    torch.manual_seed(cfg.train.seed)
    net = xkd_model.build(cfg.model).to(ddp.device)  # same seed: the same initial weights on every rank
    m = cfg.model
    opt = xkd_model.build_optimizer(net, m.lr, m.weight_decay, m.betas, m.decay_pos_tokens)
    autocast, scaler, precision = autocast_and_scaler(cfg, ddp.device)
    trainer = resume(out, net, opt, scaler, ddp)
    if ddp.main:
        split = {"train": train_ids, "holdout": held_ids, "excluded": full.excluded}
        (out / "holdout.json").write_text(json.dumps(split, indent=2) + "\n")
    engine = Trainer(cfg, ddp, net, opt, schedule, autocast, scaler)
    derived = {"world_size": ddp.world, **schedule.params(), "precision": precision, "train_clips": len(data)}
    derived.update(holdout_clips=len(held_ids), excluded_no_audio=len(full.excluded["no_audio"]))
    # MLflow inputs named by dataset and split (data/cache/<dataset>/clips: the clips pretraining trains on)
    caches = {f"{lineage.cache_dataset(c)}/train/{Path(c).name}": c for c in (clips, spectrograms) if c}

    run_id = trainer.get("mlflow_run_id") or state.get("mlflow_run_id")
    # rank 0 only; an unreachable store is one clear error now, not lost metrics later
    parent = tracking.pipeline_parent(mlflow_parent) if ddp.main else None
    # a resumed run that moves under this pipeline run shows this run's code and inputs, not the ones it began with
    moved = ddp.main and run_id is not None and tracking.moved_from(run_id, parent) is not None
    run_ctx = tracking.step_run("pretrain", parent, run_id=run_id, log_system_metrics=ddp.device.type == "cuda")
    with run_ctx if ddp.main else contextlib.nullcontext() as mlflow_run:
        logger = None
        if ddp.main:
            if run_id is None:  # a resumed run goes on in its MLflow run: params are logged once
                tracking.log_params_flat({**cfg.to_dict(), "derived": derived})
            if run_id is None or moved:  # lineage tags (git state of this pipeline run) and the named inputs
                lineage.log_lineage(lineage.collect(caches=caches), context="training")
            logger = _metric_logger(out, state, mlflow_run.info.run_id, trainer["step"])
        step = engine.fit(data, sampler, out, trainer, logger, state)
        ddp.barrier()
        if ddp.main:
            logger.flush()
            checkpoint.fault_point("before_export", step)  # the last checkpoint is on disk, the bundle not yet
            xkd_model.export_bundle(net, out / "final", step=str(step))
            plot_loss_curves(out / "metrics.jsonl", out / "loss_curves.png")
            tracking.log_png(out / "loss_curves.png", "plots")
            logger.close()  # metrics the store missed: exit 2 naming the pending file (a rerun sends them)
    return out / "final"


def _datasets(cfg, clips: str, spectrograms: str | None):
    """(every clip with audio, the training dataset, training ids, held-out ids): a hash split of the clips."""
    from xkd.data.pretrain_dataset import PretrainDataset, ViewConfig
    from xkd.train.batches import holdout_split

    views = ViewConfig.from_config(cfg)
    full = PretrainDataset(clips, spectrograms, views, seed=cfg.train.seed)
    train_ids, held_ids = holdout_split(full.ids, cfg.data.holdout_fraction, cfg.data.holdout_min)
    data = PretrainDataset(clips, spectrograms, views, seed=cfg.train.seed, clip_ids=train_ids)
    return full, data, train_ids, held_ids


def _metric_logger(out: Path, state: dict, run_id: str, step: int):
    """Record the MLflow run in run.json (a restart continues it) and drop metric lines past `step`."""
    from xkd.tracking.runs import MetricLogger
    from xkd.train.engine import truncate_metrics

    state["mlflow_run_id"] = run_id
    (out / "run.json").write_text(json.dumps(state, indent=2) + "\n")
    truncate_metrics(out / "metrics.jsonl", step)
    # unsent metrics wait in pending_metrics.jsonl beside the checkpoints; those up to `step` are replayed
    return MetricLogger(run_id, check_finite=False, pending=out / "pending_metrics.jsonl", resume_step=step)


def parser() -> argparse.ArgumentParser:
    ap = step_parser("components.pretrain", __doc__)
    ap.add_argument("--config", required=True, help="YAML file or preset name under configs/pretrain/")
    ap.add_argument("--clips", required=True, help="clip cache directory")
    ap.add_argument("--spectrograms", default=None, help="spectrogram cache (needed for data.audio_source=spectrogram)")
    ap.add_argument("--output", required=True, help="run directory: checkpoints/, metrics.jsonl, final/ (resumed)")
    ap.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="schedule length in optimiser steps; 0: the config's full schedule (model.epochs over the data); "
        "not given: the config's train.max_steps",
    )
    ap.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override"
    )
    ap.add_argument(
        "--on-new-config",
        default="refuse",
        choices=("refuse", "restart"),
        help="--output holds a run of another config: refuse, or clear it and start over (logged; dvc.yaml)",
    )
    ap.add_argument("--mlflow-parent", default=None, help=MLFLOW_PARENT_HELP)
    return ap


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    final = run(
        args.config,
        args.clips,
        args.spectrograms,
        args.output,
        max_steps=args.max_steps,
        overrides=args.overrides,
        mlflow_parent=args.mlflow_parent,
        on_new_config=args.on_new_config,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        log.info(f"final encoder bundle: {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
