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
import os
import shutil
import sys
from pathlib import Path

from xkd.errors import MLFLOW_PARENT_HELP, UsageError, cli, step_parser
from xkd.log import logger

log = logger(__name__)


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

    from xkd.tracking import lineage, registry
    from xkd.tracking import runs as tracking
    from xkd.train import checkpoint, selection
    from xkd.train.config import check_caches

    tracking.check_store()  # a dead or unsupported tracking store is one line now, before any scoring
    pre, out = Path(pretrain), Path(output)
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {batch_size})")
    ckpts = checkpoint.checkpoint_dirs(pre)
    if not ckpts:
        raise UsageError(f"no checkpoint in {pre / 'checkpoints'}; run components.pretrain first")
    held = json.loads((pre / "holdout.json").read_text())["holdout"] if (pre / "holdout.json").exists() else []
    if not held:
        raise UsageError(
            f"{pre} held out no clips (data.holdout_fraction = 0): nothing to score on without "
            "touching a test split; pretrain with a hold-out"
        )
    cfg = _pretrain_config(pre)
    check_caches(cfg, clips, spectrograms)
    for ck in ckpts:  # a damaged checkpoint or bundle is refused now, not after scoring the ones before it
        checkpoint.verify(ck)
    # the run opens before the scoring: its duration is the selection's
    with tracking.pipeline_step_run("select_checkpoint", mlflow_parent) as run:
        tracking.log_params_flat({"rule": selection.RULE, "holdout_clips": len(held), "checkpoints": len(ckpts)})
        # the inputs, named by dataset and split: the held-out clips of the pretraining caches
        records = lineage.collect(
            caches={f"{lineage.cache_dataset(p)}/holdout/{Path(p).name}": p for p in (clips, spectrograms) if p}
        )
        lineage.log_lineage(records, context="validation")
        batches = selection.held_out_batches(cfg, clips, spectrograms, held, batch_size)
        candidates = selection.score_checkpoints(cfg, ckpts, batches)
        winner = selection.winner(candidates)
        out.mkdir(parents=True, exist_ok=True)
        # selection.json is the mark of a finished selection: gone while bundle/ changes, written last (renamed
        # into place), so a kill at any point never leaves it beside a half-copied or another run's bundle
        marker, bundle, staging = out / "selection.json", out / "bundle", out / ".bundle.tmp"
        marker.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # a killed run's half copy
        shutil.copytree(pre / "checkpoints" / winner["checkpoint"] / "bundle", staging)
        shutil.rmtree(bundle, ignore_errors=True)
        os.replace(staging, bundle)
        result = {
            "rule": selection.RULE,
            "holdout_clips": held,
            "candidates": candidates,
            "winner": winner,
            "bundle": str(bundle),
            "role": winner["role"],
        }
        with tracking.MetricLogger(run.info.run_id) as logger:
            for c in candidates:  # the checkpoint's training step is the x axis of the validation curve
                logger.log(c["step"], **{f"val_loss_{c['role']}": c["val_loss"]})
        tracking.log_params_flat({"winner": f"{winner['checkpoint']}/{winner['role']}"})
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
                description=_description(cfg, pre, clips, winner, len(held)),
            )
            lineage.tag_model_version(registry.NAME, version, records)
            result["registered"] = {"name": registry.NAME, "version": int(version), "alias": registry.ALIAS}
        tmp = out / ".selection.json.tmp"
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, marker)
        mlflow.log_artifact(str(marker))
    return result


def _description(cfg, pre: Path, clips: str, winner: dict, held: int) -> str:
    """The registered version's description: what the encoder is, what it saw, how it was chosen, how to use it."""
    from xkd.tracking import lineage
    from xkd.train import selection

    split = json.loads((pre / "holdout.json").read_text())
    m, data = cfg.model, lineage.cache_dataset(clips)
    return (
        f"{m.variant.upper()} encoder, preset {m.preset} (width {m.width}, depth {m.depth}); the {winner['role']} of "
        f"checkpoint {winner['checkpoint']} (step {winner['step']} of {cfg.train.max_steps or 'the full schedule'}). "
        f"Pretrained on {data}: {len(split.get('train', []))} clips, {held} held out for selection. "
        f"Selection rule: {selection.RULE} (val_loss {winner['val_loss']:.4f}). "
        'Use: mlflow.pyfunc.load_model("models:/xkd-encoder@champion").predict({"video": [B,3,T,H,W] float32, '
        '"audio": [B,1,80,T] float32}) -> {"video": [B,D], "audio": [B,D]} embeddings (see the signature; both '
        "keys are required: for one modality, pass the other as an empty batch, shape [0, ...])."
    )


def _pretrain_config(pre: Path):
    """The config pretraining recorded (config.yaml), validated like a new one."""
    import yaml

    from xkd.train.config import build_config

    try:
        raw = yaml.safe_load((pre / "config.yaml").read_text())
    except FileNotFoundError:
        raise UsageError(f"{pre} has no config.yaml; pass a components.pretrain output directory") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UsageError(f"{pre / 'config.yaml'} is corrupt ({' '.join(str(err).split())[:200]})") from None
    return build_config(raw)


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
        log.info(f"{c['checkpoint']} {c['role']:7s} val_loss {c['val_loss']:.4f}")
    w = sel["winner"]
    log.info(
        f"winner: {w['checkpoint']} {w['role']} ({w['val_loss']:.4f}) -> {sel['bundle']}"
        + (
            f", registered {sel['registered']['name']} v{sel['registered']['version']} @champion"
            if "registered" in sel
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
