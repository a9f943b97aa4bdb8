"""`run-local`: the whole DAG under kfp.local's SubprocessRunner in this venv, with a work folder playing the PVC
(Kubernetes settings are ignored locally)."""

import os
from pathlib import Path

from pipelines.dag import build_pipeline, default_eval_specs, load_params
from pipelines.images import PLACEHOLDER_IMAGE
from pipelines.tasks import mlflow_parent_run
from xkd.paths import CONFIGS, REPO


def local_arguments(
    workdir: Path,
    preset: str = "tiny",
    max_steps: int | None = None,
    partitions: int = 2,
    raw: dict[str, str] | None = None,
    eval_specs: list[dict] | None = None,
    tracking_uri: str | None = None,
    params: dict | None = None,
    pretrain_config: str | None = None,
) -> dict:
    """Pipeline arguments for a kfp.local run: `workdir` plays the PVC (raw/<dataset> links to the data).
    `pretrain_config`: the config's path as the tasks see it (in a container: under /app), default this checkout's."""
    params = load_params() if params is None else params
    datasets = {name: str((REPO / d["raw"]).resolve()) for name, d in (params.get("datasets") or {}).items()}
    datasets.update(raw or {})
    (workdir / "raw").mkdir(parents=True, exist_ok=True)
    for name, path in datasets.items():
        link = workdir / "raw" / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(path).resolve(), target_is_directory=Path(path).is_dir())
    pre = params.get("pretrain") or {}
    specs = eval_specs if eval_specs is not None else [{**s, "preset": preset} for s in default_eval_specs(params)]
    return {
        "image": PLACEHOLDER_IMAGE,
        "data_root": str(workdir),
        "partitions": partitions,
        "pretrain_config": pretrain_config or str(CONFIGS / "pretrain" / f"{preset}.yaml"),
        "max_steps": max_steps if max_steps is not None else (pre.get("max_steps") or 0),
        "eval_specs": specs,
        "nodes": 1,
        "gpus": 0,
        "mlflow_tracking_uri": tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}",
    }


def run_local(workdir: str | os.PathLike, runner=None, **kwargs) -> dict:
    """Run the whole DAG with kfp.local's SubprocessRunner in this environment, or with `runner` (such as a
    kfp.local.DockerRunner: every task in the image; Kubernetes settings are ignored locally).
    Returns {"metrics": [metrics.json paths], "report": report.md path or None}."""
    from kfp import local

    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    args = local_arguments(work, **kwargs)
    specs = args["eval_specs"]
    runner = runner or local.SubprocessRunner(use_venv=False)
    local.init(runner=runner, pipeline_root=str(work / "kfp"))
    # the parent MLflow run is created first, by the same component (see build_pipeline: parent_from_parameter)
    args["mlflow_parent"] = mlflow_parent_run(
        outputs_dir=str(work / "outputs"), tracking_uri=args["mlflow_tracking_uri"], parent=""
    ).output
    # no retries here: kfp.local honours the back-off, so a real failure would take minutes to surface
    pipeline = build_pipeline(eval_parallelism=1, partition_parallelism=2, retries=0, parent_from_parameter=True)
    pipeline(**args)
    metrics = sorted((work / "kfp").rglob("metrics.json"))
    reports = sorted((work / "kfp").rglob("report.md"))
    return {"metrics": [str(m) for m in metrics], "report": str(reports[0]) if reports else None, "specs": specs}
