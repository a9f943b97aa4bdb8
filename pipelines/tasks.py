"""The pipeline's tasks: one `@dsl.component` per step, each body one call into `components.<step>.run(...)`
(or `merge_caches.write_partitions/merge`, the TrainJob launcher, the MLflow parent run): the functions
`dvc repro` calls. KFP embeds each body's source in the IR and runs it in the project image (or, under kfp.local,
in this venv), so imports stay inside the function and the function names are the IR's component names.
"""

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from pipelines.images import PLACEHOLDER_IMAGE


@dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
def mlflow_parent_run(outputs_dir: str, tracking_uri: str, parent: str) -> str:
    """The pipeline run's parent MLflow run: `parent` if given, else a new one recorded in outputs_dir."""
    import os

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from xkd.tracking import runs as tracking

    return tracking.parent_run_id(create=True, outputs_dir=outputs_dir, cli_value=parent or None)


@dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
def partition_inputs(input: str, parts: int, out_dir: str) -> list:
    """Split the raw file list into `parts` list files (deterministic, balanced)."""
    from components import merge_caches

    return [str(p) for p in merge_caches.write_partitions(input, parts, out_dir)]


@dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
def extract_clips(
    part_list: str,
    cache_dir: str,
    fps: float,
    short_side: int,
    sample_rate: int,
    min_duration: float,
    workers: int,
    require_audio: bool,
) -> str:
    """Clip cache of one partition under cache_dir/<partition name>; returns that directory."""
    import os

    from components import extract_clips as step
    from pipelines.flags import strict_bool

    output = os.path.join(cache_dir, os.path.basename(part_list).rsplit(".", 1)[0])
    step.run(
        part_list,
        output,
        fps=fps,
        short_side=short_side,
        sample_rate=sample_rate,
        min_duration=min_duration,
        workers=workers,
        require_audio=strict_bool(require_audio, "require_audio"),  # a string "false" must not mean true
    )
    return output


@dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
def cache_spectrograms(clips: str, cache_dir: str, min_duration: float, workers: int) -> str:
    """Log-mel cache of one partition's clip cache under cache_dir/<partition name>; returns it."""
    import os

    from components import cache_spectrograms as step

    output = os.path.join(cache_dir, os.path.basename(clips))
    step.run(output, clips=clips, min_duration=min_duration, workers=workers)
    return output


@dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
def merge_partitions(output: str, partitions: list) -> dict:
    """One manifest + report over the partition caches (shards stay where they are); returns the report."""
    from components import merge_caches

    return merge_caches.merge(output, partitions)


@dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
def extract_eval_clips(
    input: str, output: str, fps: float, short_side: int, sample_rate: int, min_duration: float, workers: int
) -> str:
    """Clip cache of an evaluation dataset with video (clips without audio are kept); returns `output`."""
    from components import extract_clips as step

    step.run(
        input,
        output,
        fps=fps,
        short_side=short_side,
        sample_rate=sample_rate,
        min_duration=min_duration,
        workers=workers,
    )
    return output


@dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
def cache_eval_spectrograms(input: str, output: str, min_duration: float, workers: int) -> dict:
    """Log-mel cache of an audio-only evaluation dataset, straight from its audio files."""
    from components import cache_spectrograms as step

    return step.run(output, input=input, min_duration=min_duration, workers=workers)


@dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
def cache_eval_clip_spectrograms(clips: str, output: str, min_duration: float, workers: int) -> dict:
    """Log-mel cache of an evaluation dataset's clip cache."""
    from components import cache_spectrograms as step

    return step.run(output, clips=clips, min_duration=min_duration, workers=workers)


@dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
def pretrain(
    config: str,
    clips: str,
    spectrograms: str,
    output: str,
    max_steps: int,
    overrides: list,
    tracking_uri: str,
    mlflow_parent: str,
) -> str:
    """Single-process pretraining (one node, one GPU or CPU); returns the pretraining output directory."""
    import os

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from components import pretrain as step

    step.run(
        config,
        clips,
        spectrograms,
        output,
        max_steps=max_steps,
        overrides=overrides,
        mlflow_parent=mlflow_parent,
    )
    return output


@dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
def pretrain_trainjob(
    image: str,
    config: str,
    clips: str,
    spectrograms: str,
    output: str,
    max_steps: int,
    overrides: list,
    tracking_uri: str,
    mlflow_parent: str,
    nodes: int,
    gpus_per_node: int,
    pvc_name: str,
    namespace: str,
    runtime: str,
    node_selector: dict,
    tolerations: list,
    mlflow_secret: str,
    timeout_s: int,
    keep: bool,
) -> str:
    """Multi-node pretraining: a Kubeflow Trainer TrainJob running `torchrun -m components.pretrain` in every
    pod; waits for it and returns the pretraining output directory (on the shared PVC)."""
    from pipelines import trainjob

    return trainjob.run(
        image=image,
        config=config,
        clips=clips,
        spectrograms=spectrograms,
        output=output,
        max_steps=max_steps,
        overrides=overrides,
        tracking_uri=tracking_uri,
        mlflow_parent=mlflow_parent,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        pvc_name=pvc_name,
        namespace=namespace or None,
        runtime=runtime,
        node_selector=node_selector,
        tolerations=tolerations,
        mlflow_secret=mlflow_secret,
        timeout_s=timeout_s,
        keep=keep,
    )


@dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
def select_checkpoint(
    pretrain_dir: str, clips: str, spectrograms: str, tracking_uri: str, mlflow_parent: str, selection: Output[Model]
):
    """Held-out selection over every kept checkpoint x {student, teacher}; `selection` holds selection.json
    and the winning encoder bundle (bundle/), also registered as xkd-encoder@champion."""
    import os

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from components import select_checkpoint as step

    step.run(pretrain_dir, clips, spectrograms, selection.path, mlflow_parent=mlflow_parent)


@dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
def evaluate(
    spec: dict,
    cache_root: str,
    tracking_uri: str,
    mlflow_parent: str,
    selection: Input[Model],
    metrics: Output[Artifact],
    scores: Output[Metrics],
):
    """One eval spec {dataset, protocol, folds, role, preset}: all its folds; writes metrics/metrics.json (for the
    report) and `scores`, the spec's mean, std and per-fold score as KFP Metrics (the run page shows them)."""
    import os

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from components import evaluate as step

    # `folds` as in params.yaml ("all", "1,2"): evaluate parses it as the dvc.yaml stage's --folds does
    result = step.run(
        os.path.join(selection.path, "bundle"),
        spec["dataset"],
        spec["protocol"],
        os.path.join(cache_root, spec["dataset"]),
        metrics.path,
        role=spec["role"],
        folds=spec["folds"],
        preset=spec["preset"],
        features=spec.get("features", "encoder"),
        mlflow_parent=mlflow_parent,
    )
    key = result["metric"]  # top1 or mAP, as metrics.json names it
    scores.metadata.update(
        {f"mean_{key}": result["mean"], f"std_{key}": result["std"]}
        | {f"fold{f['fold']}_{key}": f[key] for f in result["folds"]}
    )


@dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
def report(
    metrics: Input[List[Artifact]],
    pretrain_dir: str,
    tracking_uri: str,
    mlflow_parent: str,
    output: Output[Artifact],
    report_md: Output[Markdown],
):
    """Fan-in: the table against the paper's numbers + PNG plots (output/report.md); `report_md` is report.md
    as a Markdown artifact, which the KFP UI renders (the plots stay in `output`)."""
    import os
    import shutil

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from components import report as step

    path = step.run([m.path for m in metrics], output.path, pretrain=pretrain_dir, mlflow_parent=mlflow_parent)
    shutil.copyfile(path, report_md.path)
