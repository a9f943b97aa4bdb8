"""Checkpoint selection without touching any test split (the official code picked models on test).

    python -m components.select_checkpoint --pretrain DIR --clips DIR [--spectrograms DIR] --output DIR

Scores every kept checkpoint x {student, teacher} with the label-free XKD validation loss on the clips
held out from pretraining (`DIR/holdout.json`): the full objective (L_da + L_kd + 5 L_rec) / 7 on fixed,
seeded views and masks. The teacher is scored by putting its encoders and heads in the students' place
(the MAE decoders and DINO centres stay those of the checkpoint). Lower is better. Writes
`OUTPUT/selection.json` (every candidate's score, the winner, the rule), `OUTPUT/bundle/` (the winner's
encoder bundle) and registers it as a new version of `xkd-encoder` with alias `champion`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import mlflow
import torch
import yaml
from tqdm import tqdm

import model as xkd_model
from xkd.data.photometric import finish_batch
from xkd.data.pretrain_dataset import PretrainDataset, ViewConfig, collate, sample_seed
from xkd.errors import UsageError, cli
from xkd.tracking import lineage, registry
from xkd.tracking import runs as tracking
from xkd.train import checkpoint
from xkd.train.config import build_config

RULE = "min held-out XKD loss (label-free), student and EMA teacher, every kept checkpoint"


def _use_teacher_as_student(net: xkd_model.XKD) -> None:
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


def run(
    pretrain: str,
    clips: str,
    spectrograms: str | None,
    output: str,
    *,
    batch_size: int = 2,
    register: bool = True,
    mlflow_parent: str | None = None,
) -> dict:
    pre, out = Path(pretrain), Path(output)
    ckpts = checkpoint.checkpoint_dirs(pre)
    if not ckpts:
        raise UsageError(f"no checkpoint in {pre / 'checkpoints'}; run components.pretrain first")
    held = json.loads((pre / "holdout.json").read_text())["holdout"] if (pre / "holdout.json").exists() else []
    if not held:
        raise UsageError(
            f"{pre} held out no clips (data.holdout_fraction = 0): nothing to score on without "
            "touching a test split; pretrain with a hold-out"
        )
    cfg = build_config(yaml.safe_load((pre / "config.yaml").read_text()))
    views = ViewConfig.from_config(cfg)
    data = PretrainDataset(clips, spectrograms, views, seed=cfg.train.seed, clip_ids=held)
    samples = [data[(i, 0, i)] for i in range(len(data))]
    batches = [finish_batch(collate(samples[i : i + batch_size])) for i in range(0, len(samples), batch_size)]

    candidates = []
    for ck in tqdm(ckpts, desc="score checkpoints", unit="ckpt"):
        step = int(ck.name.split("-")[1])
        for role in ("student", "teacher"):
            net = xkd_model.build(cfg.model)
            xkd_model.load_state(net, ck / "model.safetensors")
            if role == "teacher":
                _use_teacher_as_student(net)
            candidates.append(
                {
                    "checkpoint": ck.name,
                    "step": step,
                    "role": role,
                    "val_loss": validation_loss(net, batches, cfg.train.seed),
                }
            )
    winner = min(candidates, key=lambda c: (c["val_loss"], -c["step"], c["role"]))
    out.mkdir(parents=True, exist_ok=True)
    bundle = out / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(pre / "checkpoints" / winner["checkpoint"] / "bundle", bundle)
    selection = {
        "rule": RULE,
        "holdout_clips": held,
        "candidates": candidates,
        "winner": winner,
        "bundle": str(bundle),
        "role": winner["role"],
    }

    with tracking.pipeline_step_run("select_checkpoint", mlflow_parent) as run:
        with tracking.MetricLogger(run.info.run_id) as logger:
            for c in candidates:
                logger.log(c["step"], **{f"val_loss_{c['role']}": c["val_loss"]})
        tracking.log_params_flat(
            {
                "rule": RULE,
                "holdout_clips": len(held),
                "candidates": len(candidates),
                "winner": f"{winner['checkpoint']}/{winner['role']}",
            }
        )
        records = lineage.collect(caches={"clips": clips, **({"spectrograms": spectrograms} if spectrograms else {})})
        lineage.log_lineage(records)
        if register:
            version = registry.register_encoder(
                bundle,
                run.info.run_id,
                tags={
                    "role": winner["role"],
                    "step": str(winner["step"]),
                    "val_loss": f"{winner['val_loss']:.6f}",
                    "rule": RULE,
                    "pretrain_run": json.loads((pre / "run.json").read_text()).get("mlflow_run_id", ""),
                },
            )
            lineage.tag_model_version(registry.NAME, version, records)
            selection["registered"] = {"name": registry.NAME, "version": int(version), "alias": registry.ALIAS}
        (out / "selection.json").write_text(json.dumps(selection, indent=2) + "\n")
        mlflow.log_artifact(str(out / "selection.json"))
    return selection


@cli
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m components.select_checkpoint", description=__doc__.split("\n")[0])
    ap.add_argument("--pretrain", required=True, help="pretraining output directory")
    ap.add_argument("--clips", required=True, help="the clip cache pretraining used")
    ap.add_argument("--spectrograms", default=None)
    ap.add_argument("--output", required=True)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--no-register", action="store_true", help="skip the MLflow model registry")
    ap.add_argument("--mlflow-parent", default=None)
    args = ap.parse_args(argv)
    sel = run(
        args.pretrain,
        args.clips,
        args.spectrograms,
        args.output,
        batch_size=args.batch_size,
        register=not args.no_register,
        mlflow_parent=args.mlflow_parent,
    )
    for c in sel["candidates"]:
        print(f"{c['checkpoint']} {c['role']:7s} val_loss {c['val_loss']:.4f}", file=sys.stderr)
    w = sel["winner"]
    print(
        f"winner: {w['checkpoint']} {w['role']} ({w['val_loss']:.4f}) -> {sel['bundle']}"
        + (
            f", registered {sel['registered']['name']} v{sel['registered']['version']} @champion"
            if "registered" in sel
            else ""
        ),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
