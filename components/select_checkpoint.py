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

from xkd.errors import MLFLOW_PARENT_HELP, UsageError, cli, step_parser


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
    import mlflow
    import yaml

    from xkd.tracking import lineage, registry
    from xkd.tracking import runs as tracking
    from xkd.train import checkpoint, selection
    from xkd.train.config import build_config

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
    batches = selection.held_out_batches(cfg, clips, spectrograms, held, batch_size)
    candidates = selection.score_checkpoints(cfg, ckpts, batches)
    winner = selection.winner(candidates)
    out.mkdir(parents=True, exist_ok=True)
    bundle = out / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(pre / "checkpoints" / winner["checkpoint"] / "bundle", bundle)
    result = {
        "rule": selection.RULE,
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
                "rule": selection.RULE,
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
                    "rule": selection.RULE,
                    "pretrain_run": json.loads((pre / "run.json").read_text()).get("mlflow_run_id", ""),
                },
            )
            lineage.tag_model_version(registry.NAME, version, records)
            result["registered"] = {"name": registry.NAME, "version": int(version), "alias": registry.ALIAS}
        (out / "selection.json").write_text(json.dumps(result, indent=2) + "\n")
        mlflow.log_artifact(str(out / "selection.json"))
    return result


def parser() -> argparse.ArgumentParser:
    ap = step_parser("components.select_checkpoint", __doc__)
    ap.add_argument("--pretrain", required=True, help="pretraining output directory (checkpoints/, holdout.json)")
    ap.add_argument("--clips", required=True, help="the clip cache pretraining used")
    ap.add_argument("--spectrograms", default=None, help="the spectrogram cache pretraining used, if any")
    ap.add_argument("--output", required=True, help="where selection.json and bundle/ are written")
    ap.add_argument("--batch-size", type=int, default=2, help="held-out clips per scoring batch")
    ap.add_argument("--no-register", action="store_true", help="skip the MLflow model registry")
    ap.add_argument("--mlflow-parent", default=None, help=MLFLOW_PARENT_HELP)
    return ap


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
