"""Downstream evaluation of an encoder bundle on one dataset with one protocol, all its folds.

    python -m components.evaluate --encoder BUNDLE_DIR [--role student|teacher|selected] --dataset NAME \
        --protocol svm|linear [--folds 1,2|all] --data DIR --output DIR \
        [--features encoder|random-init|logmel-stats|pixel-stats|shuffled-labels] [--summary FILE]

Writes `OUTPUT/metrics.json` (Contracts): per fold the score with hyper-parameters chosen on a validation
carve of the training split (`selected_on: "val"`), mean and std over folds (ddof 1), and beside it the official
code's choice on the test fold (`paper_style`, labelled). Protocol settings come from
`configs/eval/<dataset>.yaml` (the official values; configs/eval/esc10.yaml scales them down for the CPU run).
Each evaluation is an MLflow run nested under the pipeline's parent run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

from xkd.errors import MLFLOW_PARENT_HELP, UsageError, cli, step_parser
from xkd.evaluation import controls as eval_controls
from xkd.evaluation import datasets as eval_datasets
from xkd.log import logger
from xkd.paths import CONFIGS

log = logger(__name__)

PROTOCOLS = ("svm", "linear", "finetune")
PAPER_RULE = "hyper-parameter (SVM C / epoch) with the best score on the test fold, as the official code"


def load_settings(dataset: str, protocol: str, config: str | None) -> dict:
    path = Path(config) if config else CONFIGS / "eval" / f"{dataset}.yaml"
    if not path.exists():
        raise UsageError(f"no evaluation config {path}; add one (see configs/eval/esc50.yaml)")
    settings = (yaml.safe_load(path.read_text()) or {}).get(protocol)
    if settings is None:
        raise UsageError(f"{path} has no '{protocol}' section")
    return settings


def resolve_role(encoder: Path, role: str) -> str:
    """`selected`: the role the checkpoint selection chose (selection.json beside the bundle)."""
    if role != "selected":
        return role
    sel = encoder.parent / "selection.json"
    if not sel.exists():
        raise UsageError(f"--role selected needs {sel} (written by components.select_checkpoint)")
    return json.loads(sel.read_text())["role"]


def _verified_bundle(bundle: Path, role: str) -> dict:
    """config.json of `bundle`, after checking it and the role's encoder files (shapes, finite values, export
    digest): a damaged bundle is refused before any evaluation work, not after a whole evaluation."""
    from model.bundle import BundleError, verify_bundle

    try:
        return verify_bundle(bundle, roles=(role,))
    except BundleError as err:
        raise UsageError(f"{err}; pass outputs/select/bundle or a pretraining checkpoint's bundle/") from None


def run(
    encoder: str,
    dataset: str,
    protocol: str,
    data: str,
    output: str,
    *,
    role: str = "student",
    folds: list[int] | str | None = None,
    preset: str | None = None,
    mlflow_parent: str | None = None,
    features: str = "encoder",
    config: str | None = None,
    feature_cache: str | None = None,
    shuffle_labels: bool = False,
    summary: str | None = None,
) -> dict:
    """Evaluate and write OUTPUT/metrics.json; returns its content."""
    import numpy as np
    import torch

    from xkd.data.cache import CacheReader
    from xkd.evaluation.features import FeatureSource, ViewSettings, frozen_features
    from xkd.evaluation.folds import evaluate_fold
    from xkd.evaluation.summary import DDOF, spread, write_headline
    from xkd.tracking import runs as tracking

    tracking.check_store()  # a dead or unsupported tracking store is one line now, before any evaluation
    started = time.time()
    ds = eval_datasets.info(dataset)
    if protocol not in PROTOCOLS:
        raise UsageError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    eval_controls.check(features, dataset, ds.modality)  # e.g. pixel-stats on an audio dataset: one line
    needs_bundle = eval_controls.needs_bundle(features)
    shuffle_labels = eval_controls.shuffles_labels(features, shuffle_labels)
    bundle = Path(encoder)
    role = resolve_role(bundle, role)
    bundle_cfg = _verified_bundle(bundle, role) if needs_bundle else {}
    if preset is not None and bundle_cfg and bundle_cfg.get("preset") != preset:
        raise UsageError(
            f"the spec asks for a {preset!r} encoder but {bundle} holds a {bundle_cfg.get('preset')!r} one; "
            "fix the spec's preset or pass the right bundle"
        )
    preset = bundle_cfg.get("preset", preset)
    folds = eval_datasets.parse_folds(folds) or eval_datasets.fold_numbers(dataset, data)  # fsdd: per speaker
    settings = load_settings(dataset, protocol, config)
    clips, specs = eval_datasets.cache_dirs(dataset, data)
    vs = ViewSettings.from_settings(settings)  # train_views, test_clips, test_crops, gain_jitter, size, ...
    geometry = _geometry(bundle if encoder else None, preset)  # the windows and crop side the encoder takes
    fold_data = [eval_datasets.load_fold(dataset, f, data) for f in folds]
    available = set.intersection(*(set(CacheReader(p).ids()) for p in (clips, specs) if p is not None))
    universe = sorted({s.clip_id for f in fold_data for s in f.train + f.test})
    missing = [c for c in universe if c not in available]
    if len(missing) == len(universe):
        raise UsageError(
            f"none of the {len(universe)} {dataset} samples of folds {folds} is in the cache under "
            f"{data} (e.g. {universe[0]!r}); was it built from the dataset root?"
        )
    ids = [c for c in universe if c in available]
    source = FeatureSource(eval_controls.source_kind(features), bundle if needs_bundle else None, role, seed=0)
    if protocol == "finetune" and (
        features != "encoder" or ds.modality not in ("audio", "video") or ds.metric != "top1"
    ):
        raise UsageError("finetune runs a pretrained encoder on a single-modality, single-label dataset")
    name = f"evaluate:{dataset}-{protocol}" + ("" if features == "encoder" else f"-{features}")
    # the run opens now, before the features and folds: its duration is the evaluation's
    with tracking.pipeline_step_run(name, mlflow_parent, tags={"xkd.dataset": dataset, "xkd.protocol": protocol}):
        digest = source.digest("audio" if ds.modality == "audio" else "video")
        _track_start(dataset, protocol, role, features, preset, settings, digest, folds, clips, specs)
        if protocol == "finetune":
            feats = {"index": torch.arange(len(ids))}  # no frozen features: the encoder trains
        else:
            cache = Path(feature_cache or Path(data) / "features")
            feats = frozen_features(source, clips, specs, ids, vs, cache, geometry)
        row = {c: i for i, c in enumerate(ids)}

        finetune_args = None
        if protocol == "finetune":
            finetune_args = (bundle, role, CacheReader(clips if ds.modality == "video" else specs))
        results = [
            evaluate_fold(
                fold, row, feats, ds, protocol, settings, shuffle_labels=shuffle_labels, finetune_args=finetune_args
            )
            for fold in fold_data
        ]
        key = ds.metric
        scores = [r[key] for r in results]
        paper = [r["paper_style"][key] for r in results]
        metrics = {
            "dataset": dataset,
            "protocol": protocol,
            "role": role,
            "features": features,
            "metric": key,
            "chance": ds.chance,  # top-1 of a guess on balanced classes (None for mAP)
            "encoder": str(bundle) if needs_bundle else None,
            "encoder_digest": digest,
            "preset": preset,
            "variant": bundle_cfg.get("variant"),
            "folds": results,
            "mean": float(np.mean(scores)),
            "std": spread(scores),  # over folds, ddof 1 (xkd.evaluation.summary)
            "std_ddof": DDOF,
            "paper_style": {"rule": PAPER_RULE, "mean": float(np.mean(paper)), "std": spread(paper)},
            "settings": settings,
            "smoke": ds.smoke,
            "shuffled_labels": shuffle_labels,
            "wall_s": round(time.time() - started, 1),
        }
        if ds.smoke:
            metrics["note"] = f"smoke test of the code path on {len(ids)} sample clips, not a benchmark"
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".metrics.json.tmp"  # renamed into place: a kill mid-write never leaves a truncated metrics.json
        tmp.write_text(json.dumps(metrics, indent=2, default=str) + "\n")
        os.replace(tmp, out / "metrics.json")
        if summary:  # the small headline DVC compares (dvc.yaml: results/eval/<name>.json)
            write_headline(metrics, summary)
        _track_end(metrics, out, bundle if needs_bundle else None)
    return metrics


def _geometry(bundle: Path | None, preset: str | None):
    """The evaluated encoder's input geometry (its bundle's model config; the preset's for a control without a
    bundle): a config whose geometry the views cannot produce is one line."""
    from model import ConfigError
    from xkd.evaluation.views import encoder_geometry

    try:
        return encoder_geometry(bundle, preset)
    except (ConfigError, ValueError) as err:
        where = bundle / "config.json" if bundle is not None else f"preset {preset!r}"
        raise UsageError(f"{where}: {err}") from None


def _track_start(dataset, protocol, role, features, preset, settings, digest, folds, clips, specs) -> None:
    """What the evaluation's MLflow run knows at its start: its params and its inputs, named by dataset and split."""
    from xkd.tracking import lineage
    from xkd.tracking import runs as tracking

    params = {"dataset": dataset, "protocol": protocol, "role": role, "features": features, "preset": preset}
    tracking.log_params_flat({**params, "folds": list(folds), "settings": settings, "encoder_digest": digest})
    split = "folds " + " ".join(str(f) for f in folds)  # every fold is tested once: the evaluation's split
    caches = {f"{dataset}/{split}/{p.name}": str(p) for p in (clips, specs) if p is not None}
    lineage.log_lineage(lineage.collect(caches=caches), context="evaluation")


def _track_end(metrics: dict, out: Path, bundle: Path | None) -> None:
    """The headline (`<metric>` = the mean over folds, `<metric>_std`), each fold as its own key
    (`fold_<k>/<metric>`), never as steps; metrics.json; and, for the encoder itself only, the scores on the
    registered encoder version. A control (random-init, stats, shuffled labels) scores something else than the
    encoder: it stays in its own run, or the model's page would list, say, a random-init score as the model's."""
    import mlflow

    from xkd.tracking import registry

    key = metrics["metric"]
    head = {key: metrics["mean"], f"{key}_std": metrics["std"], f"paper_style_{key}": metrics["paper_style"]["mean"]}
    per_fold = {}
    for f in metrics["folds"]:
        per_fold[f"fold_{f['fold']}/{key}"] = f[key]
        per_fold[f"fold_{f['fold']}/paper_style_{key}"] = f["paper_style"][key]
    the_encoder = bundle is not None and metrics["features"] == "encoder" and not metrics["shuffled_labels"]
    version = registry.attach_evaluation(bundle, metrics) if the_encoder else None
    # linked to the registered model (MLflow 3 logged model): the version's page lists the scores
    mlflow.log_metrics(head, step=0, model_id=registry.logged_model_id(version) if version is not None else None)
    mlflow.log_metrics(per_fold, step=0)
    mlflow.log_artifact(str(out / "metrics.json"))


def parser() -> argparse.ArgumentParser:
    ap = step_parser("components.evaluate", __doc__)
    ap.add_argument(
        "--encoder", default="", help="encoder bundle directory (not needed for logmel-stats / pixel-stats)"
    )
    ap.add_argument(
        "--role",
        default="student",
        choices=("student", "teacher", "selected"),
        help="which encoders of the bundle; selected: the role checkpoint selection chose",
    )
    ap.add_argument("--dataset", required=True, choices=list(eval_datasets.DATASETS), help="downstream dataset")
    ap.add_argument(
        "--protocol", required=True, choices=PROTOCOLS, help="frozen-feature svm / linear probe, or finetune"
    )
    ap.add_argument("--folds", default="all", help="comma-separated folds/splits, or all")
    ap.add_argument("--data", required=True, help="the dataset's cache root (holding clips/ and/or spectrograms/)")
    ap.add_argument("--output", required=True, help="where metrics.json is written")
    ap.add_argument(
        "--features",
        default="encoder",
        choices=eval_controls.FEATURES,
        help="the bundle's encoder, or a control through the same code path",
    )
    ap.add_argument(
        "--preset",
        default=None,
        help="the encoder preset the spec expects (tiny|base); refused when the bundle holds another "
        "(default: the bundle's own)",
    )
    ap.add_argument("--config", default=None, help="evaluation settings YAML (default configs/eval/<dataset>.yaml)")
    ap.add_argument("--shuffle-labels", action="store_true", help="control: permute the training labels")
    ap.add_argument("--feature-cache", default=None, help="where frozen features are cached (default DATA/features)")
    ap.add_argument(
        "--summary", default=None, help="also write the headline (mean, std ddof 1, n folds) to this small JSON file"
    )
    ap.add_argument("--mlflow-parent", default=None, help=MLFLOW_PARENT_HELP)
    return ap


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    m = run(
        args.encoder,
        args.dataset,
        args.protocol,
        args.data,
        args.output,
        role=args.role,
        folds=args.folds,
        preset=args.preset,
        mlflow_parent=args.mlflow_parent,
        features=args.features,
        config=args.config,
        feature_cache=args.feature_cache,
        shuffle_labels=args.shuffle_labels,
        summary=args.summary,
    )
    log.info(
        f"{args.dataset} {args.protocol} ({args.features}, {m['role']}): {m['metric']} {m['mean']:.1f} "
        f"+- {m['std']:.1f} (val-selected); paper-style {m['paper_style']['mean']:.1f}"
        + (f"  [{m['note']}]" if m.get("note") else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
