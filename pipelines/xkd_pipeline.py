"""The XKD pipeline as a Kubeflow Pipelines v2 DAG: compile it, run it locally, or submit it.

    python -m pipelines.xkd_pipeline compile --output xkd.yaml [--image REPO@sha256:... | REPO:TAG]
    python -m pipelines.xkd_pipeline run-local [--preset tiny] [--max-steps N] [--workdir DIR]
    python -m pipelines.xkd_pipeline submit --host URL [--experiment xkd] [--image ...] [--set name=JSON ...]

Every task body calls one `components.<step>.run(...)` (or `merge_caches.write_partitions/merge`, or the
TrainJob launcher): the functions `dvc repro` calls. This file only wires them together and sets the
Kubernetes side (PVC, GPUs, /dev/shm, retries, node placement). Caches and pretraining checkpoints stay on
the PVC; only the selected encoder bundle, metrics and the report travel as KFP artifacts.
"""

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import List

import yaml
from kfp import compiler, dsl
from kfp import kubernetes as k8s
from kfp.dsl import Artifact, Input, Model, Output
from kfp.dsl.pipeline_channel import PipelineChannel

from xkd.paths import REPO

DATA_MOUNT = "/data"  # where the PVC is mounted in every pod
SHM_SIZE = "16Gi"  # memory-backed /dev/shm for DataLoader workers (GPU tasks)
PLACEHOLDER_IMAGE = "xkd-pipeline:0.1.0"  # always replaced by the `image` pipeline parameter
MLFLOW_SECRET_KEYS = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}
IMAGE_RE = re.compile(
    r"^(?P<name>[a-z0-9]+(?:[._/:-][a-z0-9]+)*?)"
    r"(?:@sha256:[0-9a-f]{64}|:(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))$"
)
FLOATING_TAGS = {"latest", "main", "master", "stable", "nightly", "dev", "edge"}


class UsageError(ValueError):
    """A bad command-line value; main() prints it as one line and exits 2."""


def validate_image(image: str) -> str:
    """`name@sha256:<digest>` or `name:<exact tag>`; no tag, or a moving tag like `latest`, is refused."""
    m = IMAGE_RE.match(image or "")
    if not m or (m["tag"] is not None and m["tag"].lower() in FLOATING_TAGS):
        raise UsageError(
            f"image {image!r} must be pinned: REGISTRY/NAME@sha256:<64 hex> or REGISTRY/NAME:<exact "
            f"version tag> (not {', '.join(sorted(FLOATING_TAGS))})"
        )
    return image


def load_params(path: Path = REPO / "params.yaml") -> dict:
    return yaml.safe_load(path.read_text()) or {}


def default_eval_specs(params: dict) -> list[dict]:
    """params.yaml `eval.specs` + `eval.controls` (the same items the dvc.yaml foreach stages run)."""
    ev = params.get("eval") or {}
    return list(ev.get("specs") or []) + list(ev.get("controls") or [])


def eval_modalities(datasets: list[str]) -> dict[str, str]:
    from xkd.evaluation import datasets as eval_datasets

    return {ds: eval_datasets.info(ds).modality for ds in datasets}


# ---------------------------------------------------------------------------------------------- components
# Bodies run in the project image (or, under kfp.local, in this venv): imports stay inside the function.


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

    output = os.path.join(cache_dir, os.path.basename(part_list).rsplit(".", 1)[0])
    step.run(
        part_list,
        output,
        fps=fps,
        short_side=short_side,
        sample_rate=sample_rate,
        min_duration=min_duration,
        workers=workers,
        require_audio=require_audio,
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
        max_steps=max_steps or None,
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
        max_steps=max_steps or None,
        overrides=overrides,
        tracking_uri=tracking_uri,
        mlflow_parent=mlflow_parent,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        pvc_name=pvc_name,
        mount_path="/data",
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
):
    """One eval spec {dataset, protocol, folds, role, preset}: all its folds; writes metrics/metrics.json."""
    import os

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from components import evaluate as step

    # `folds` as in params.yaml: "all" or "1,2" (the form the dvc.yaml stage passes to --folds).
    step.run(
        os.path.join(selection.path, "bundle"),
        spec["dataset"],
        spec["protocol"],
        os.path.join(cache_root, spec["dataset"]),
        metrics.path,
        role=spec["role"],
        folds=None if spec["folds"] == "all" else [int(f) for f in str(spec["folds"]).split(",")],
        preset=spec["preset"],
        features=spec.get("features", "encoder"),
        mlflow_parent=mlflow_parent,
    )


@dsl.component(base_image=PLACEHOLDER_IMAGE, install_kfp_package=False)
def report(
    metrics: Input[List[Artifact]], pretrain_dir: str, tracking_uri: str, mlflow_parent: str, output: Output[Artifact]
):
    """Fan-in: the table against the paper's numbers + PNG plots (output/report.md)."""
    import os

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from components import report as step

    step.run([m.path for m in metrics], output.path, pretrain=pretrain_dir, mlflow_parent=mlflow_parent)


# ---------------------------------------------------------------------------------------------- the DAG


def _channels(*values):
    # kfp 2.17.3 does not pass a pipeline parameter used only in set_cpu_request/set_memory_request/
    # set_accelerator_limit into an enclosing ParallelFor/If sub-DAG (the pod then fails to resolve it);
    # registering it as a consumed channel does. The IR test checks every placeholder resolves.
    return [v for v in values if isinstance(v, PipelineChannel)]


def _on_pvc(task, pvc_name, cpu, memory):
    """Every task sees the caches/outputs PVC at DATA_MOUNT and requests CPU and memory."""
    k8s.mount_pvc(task, pvc_name=pvc_name, mount_path=DATA_MOUNT)
    task.register_pipeline_channels(_channels(cpu, memory))
    return task.set_cpu_request(cpu).set_memory_request(memory)


def _data_step(task, pvc_name, cpu, memory, retries):
    """Extraction/caching/merging: retried (a node lost mid-run costs one partition, and the components are
    incremental), and never KFP-cached: their real output is on the PVC, which KFP's cache key cannot see."""
    _on_pvc(task, pvc_name, cpu, memory)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="60s", backoff_factor=2.0)
    return task.set_caching_options(False)


def _gpu_step(task, pvc_name, cpu, memory, gpus, node_selector, tolerations):
    _on_pvc(task, pvc_name, cpu, memory)
    task.register_pipeline_channels(_channels(gpus))
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
    k8s.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=SHM_SIZE)
    k8s.add_node_selector_json(task, node_selector)
    k8s.add_toleration_json(task, tolerations)
    return task


def build_pipeline(
    params: dict | None = None,
    eval_parallelism: int = 4,
    partition_parallelism: int = 16,
    image: str = PLACEHOLDER_IMAGE,
    retries: int = 3,
    parent_from_parameter: bool = False,
):
    """The pipeline function; defaults come from params.yaml. Evaluation datasets get their cache tasks at
    compile time (one per dataset named in the default eval specs).

    `parent_from_parameter` (run-local only): kfp.local 2.17.3 replaces every task output parameter that
    enters a ParallelFor over a parameter list with the loop item, so locally the eval loop reads the parent
    MLflow run id from the `mlflow_parent` pipeline parameter (run_local creates the run first)."""
    params = load_params() if params is None else params
    specs = default_eval_specs(params)
    pretrain_default = params.get("pretrain_dataset", "samples-av")
    eval_datasets = eval_modalities(sorted({s["dataset"] for s in specs}))
    ex, sp = params.get("extract") or {}, params.get("spectrograms") or {}
    pre = params.get("pretrain") or {}

    @dsl.pipeline(name="xkd", description="XKD: caches -> pretrain -> select -> evaluate x specs -> report")
    def xkd(
        image: str = image,
        pvc_name: str = "xkd-data",
        data_root: str = DATA_MOUNT,
        pretrain_dataset: str = pretrain_default,
        partitions: int = 4,
        extract_fps: float = float(ex.get("fps", 8.0)),
        extract_short_side: int = int(ex.get("short_side", 112)),
        extract_sample_rate: int = int(ex.get("sample_rate", 16000)),
        extract_min_duration: float = float(ex.get("min_duration", 1.0)),
        extract_workers: int = int(ex.get("workers", 4)),
        extract_require_audio: bool = bool(ex.get("require_audio", False)),
        spectrogram_min_duration: float = float(sp.get("min_duration", 1.0)),
        spectrogram_workers: int = int(sp.get("workers", 4)),
        pretrain_config: str = pre.get("config", "configs/pretrain/tiny.yaml"),
        max_steps: int = pre.get("max_steps") or 0,
        pretrain_overrides: list = [],
        eval_specs: list = specs,
        mlflow_tracking_uri: str = "http://mlflow.mlflow.svc.cluster.local:5000",
        mlflow_secret: str = "mlflow-credentials",
        mlflow_parent: str = "",
        nodes: int = 1,
        gpus: int = 1,
        gpu_cpu: str = "8",
        gpu_memory: str = "64Gi",
        data_cpu: str = "4",
        data_memory: str = "8Gi",
        node_selector: dict = {},
        tolerations: list = [],
        trainjob_namespace: str = "",
        trainjob_runtime: str = "torch-distributed",
        trainjob_timeout_s: int = 7 * 24 * 3600,
        keep_trainjob: bool = False,
    ):
        def pod(task, cpu=data_cpu, memory=data_memory):
            task.set_container_image(image)
            k8s.use_secret_as_env(task, mlflow_secret, MLFLOW_SECRET_KEYS, optional=True)
            return task

        clips_dir = f"{data_root}/cache/{pretrain_dataset}/clips"
        spectro_dir = f"{data_root}/cache/{pretrain_dataset}/spectrograms"
        extract = dict(
            fps=extract_fps,
            short_side=extract_short_side,
            sample_rate=extract_sample_rate,
            min_duration=extract_min_duration,
            workers=extract_workers,
        )
        spectro = dict(min_duration=spectrogram_min_duration, workers=spectrogram_workers)

        def data(task, cpu=data_cpu, memory=data_memory):
            return _data_step(pod(task), pvc_name, cpu, memory, retries)

        parent = pod(
            mlflow_parent_run(
                outputs_dir=f"{data_root}/outputs/runs/{dsl.PIPELINE_JOB_ID_PLACEHOLDER}",
                tracking_uri=mlflow_tracking_uri,
                parent=mlflow_parent,
            )
        )
        _on_pvc(parent, pvc_name, "500m", "1Gi").set_caching_options(False)
        parent_id = parent.output

        # Sharded caches: N partitions of the input list, one extraction + spectrogram task each, merged.
        parts = data(
            partition_inputs(
                input=f"{data_root}/raw/{pretrain_dataset}",
                parts=partitions,
                out_dir=f"{data_root}/cache/{pretrain_dataset}/partitions",
            ),
            "1",
            "2Gi",
        )
        with dsl.ParallelFor(parts.output, parallelism=partition_parallelism, name="partitions") as part:
            ext = data(
                extract_clips(part_list=part, cache_dir=clips_dir, require_audio=extract_require_audio, **extract)
            )
            spec = data(cache_spectrograms(clips=ext.output, cache_dir=spectro_dir, **spectro))
        merged_clips = data(merge_partitions(output=clips_dir, partitions=dsl.Collected(ext.output)), "1", "2Gi")
        merged_spectro = data(merge_partitions(output=spectro_dir, partitions=dsl.Collected(spec.output)), "1", "2Gi")
        merged_clips.set_display_name("merge-clip-partitions")
        merged_spectro.set_display_name("merge-spectrogram-partitions").after(merged_clips)

        eval_caches = []
        for ds, modality in eval_datasets.items():  # static: a cache branch per other evaluation dataset
            raw, cache = f"{data_root}/raw/{ds}", f"{data_root}/cache/{ds}"
            if ds == pretrain_default:
                continue  # evaluated on the merged pretraining caches (select already waits for them)
            if "video" not in modality:
                t = data(cache_eval_spectrograms(input=raw, output=f"{cache}/spectrograms", **spectro))
                eval_caches.append(t.set_display_name(f"cache-{ds}"))
            else:
                c = data(extract_eval_clips(input=raw, output=f"{cache}/clips", **extract))
                t = data(cache_eval_clip_spectrograms(clips=c.output, output=f"{cache}/spectrograms", **spectro))
                eval_caches += [c.set_display_name(f"extract-{ds}"), t.set_display_name(f"spectrograms-{ds}")]

        train_args = dict(
            config=pretrain_config,
            clips=clips_dir,
            spectrograms=spectro_dir,
            output=f"{data_root}/outputs/pretrain",
            max_steps=max_steps,
            overrides=pretrain_overrides,
            tracking_uri=mlflow_tracking_uri,
            mlflow_parent=parent_id,
        )
        launch_args = dict(
            image=image,
            nodes=nodes,
            gpus_per_node=gpus,
            pvc_name=pvc_name,
            namespace=trainjob_namespace,
            runtime=trainjob_runtime,
            node_selector=node_selector,
            tolerations=tolerations,
            mlflow_secret=mlflow_secret,
            timeout_s=trainjob_timeout_s,
            keep=keep_trainjob,
        )
        trained = []
        with dsl.If(nodes > 1, name="multi-node"):
            trained.append(pod(pretrain_trainjob(**train_args, **launch_args)))
        with dsl.Elif(gpus > 1, name="multi-gpu"):
            trained.append(pod(pretrain_trainjob(**train_args, **launch_args)))
        with dsl.Else(name="single-process"):
            single = pod(pretrain(**train_args))
            _gpu_step(single, pvc_name, gpu_cpu, gpu_memory, gpus, node_selector, tolerations)
            trained.append(single)
        for t in trained:
            t.after(merged_spectro).set_caching_options(False)
        for t in trained[:2]:  # the launcher pod only watches the TrainJob
            _on_pvc(t.set_display_name("pretrain-trainjob"), pvc_name, "500m", "1Gi")
        pretrain_dir = dsl.OneOf(*(t.output for t in trained))

        select = pod(
            select_checkpoint(
                pretrain_dir=pretrain_dir,
                clips=clips_dir,
                spectrograms=spectro_dir,
                tracking_uri=mlflow_tracking_uri,
                mlflow_parent=parent_id,
            )
        )
        _on_pvc(select, pvc_name, data_cpu, data_memory).set_caching_options(False)

        with dsl.ParallelFor(eval_specs, parallelism=eval_parallelism, name="eval-specs") as item:
            ev = pod(
                evaluate(
                    spec=item,
                    cache_root=f"{data_root}/cache",
                    tracking_uri=mlflow_tracking_uri,
                    mlflow_parent=mlflow_parent if parent_from_parameter else parent_id,
                    selection=select.outputs["selection"],
                )
            )
            ev.after(parent)
            _gpu_step(ev, pvc_name, gpu_cpu, gpu_memory, gpus, node_selector, tolerations)
            ev.after(*eval_caches).set_caching_options(False)
        rep = pod(
            report(
                metrics=dsl.Collected(ev.outputs["metrics"]),
                pretrain_dir=pretrain_dir,
                tracking_uri=mlflow_tracking_uri,
                mlflow_parent=parent_id,
            )
        )
        _on_pvc(rep, pvc_name, "1", "2Gi")
        rep.set_caching_options(False)

    return xkd


# ---------------------------------------------------------------------------------------------- the CLI


def compile_pipeline(output: str | os.PathLike, image: str = PLACEHOLDER_IMAGE, **build) -> Path:
    validate_image(image)
    compiler.Compiler().compile(build_pipeline(image=image, **build), str(output))
    return Path(output)


def _set_args(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"--set {pair!r}: expected NAME=VALUE (VALUE as JSON for numbers, lists, dicts)")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def local_arguments(
    workdir: Path,
    preset: str = "tiny",
    max_steps: int | None = None,
    partitions: int = 2,
    raw: dict[str, str] | None = None,
    eval_specs: list[dict] | None = None,
    tracking_uri: str | None = None,
    params: dict | None = None,
) -> dict:
    """Pipeline arguments for a kfp.local run: `workdir` plays the PVC (raw/<dataset> links to the data)."""
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
        "pretrain_config": str(REPO / "configs" / "pretrain" / f"{preset}.yaml"),
        "max_steps": max_steps if max_steps is not None else (pre.get("max_steps") or 0),
        "eval_specs": specs,
        "nodes": 1,
        "gpus": 0,
        "mlflow_tracking_uri": tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}",
    }


def run_local(workdir: str | os.PathLike, **kwargs) -> dict:
    """Run the whole DAG with kfp.local's SubprocessRunner in this environment (Kubernetes settings are
    ignored locally). Returns {"metrics": [metrics.json paths], "report": report.md path or None}."""
    from kfp import local

    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    args = local_arguments(work, **kwargs)
    specs = args["eval_specs"]
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(work / "kfp"))
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


def submit(
    host: str,
    experiment: str = "xkd",
    image: str = PLACEHOLDER_IMAGE,
    arguments: dict | None = None,
    run_name: str | None = None,
):
    import kfp

    validate_image(arguments.get("image", image) if arguments else image)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / "xkd.yaml", image=image)
        client = kfp.Client(host=host)
        return client.create_run_from_pipeline_package(
            str(package), arguments=arguments or {}, experiment_name=experiment, run_name=run_name
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.xkd_pipeline", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compile", help="write the pipeline IR YAML")
    c.add_argument("--output", required=True)
    c.add_argument("--image", default=PLACEHOLDER_IMAGE, help="default image: NAME@sha256:... or NAME:<exact tag>")
    c.add_argument("--eval-parallelism", type=int, default=4)
    c.add_argument("--partition-parallelism", type=int, default=16)
    r = sub.add_parser("run-local", help="run the DAG here with kfp.local (subprocesses, this venv)")
    r.add_argument("--preset", default="tiny", help="pretraining config name and eval preset")
    r.add_argument("--max-steps", type=int, default=None)
    r.add_argument("--partitions", type=int, default=2)
    r.add_argument("--workdir", default="outputs/kfp-local", help="plays the PVC: raw/, cache/, outputs/, kfp/")
    r.add_argument("--raw", action="append", default=[], metavar="DATASET=PATH", help="override a dataset's input")
    r.add_argument("--tracking-uri", default=None, help="default: sqlite in the workdir")
    s = sub.add_parser("submit", help="compile and start a run on a Kubeflow Pipelines endpoint")
    s.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.org/pipeline")
    s.add_argument("--experiment", default="xkd")
    s.add_argument("--image", required=True, help="NAME@sha256:... or NAME:<exact tag>")
    s.add_argument("--run-name", default=None)
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PARAM=VALUE",
        help="pipeline parameter (VALUE parsed as JSON when it is JSON), e.g. --set nodes=4",
    )
    args = ap.parse_args(argv)
    try:
        if args.cmd == "compile":
            out = compile_pipeline(
                args.output,
                image=args.image,
                eval_parallelism=args.eval_parallelism,
                partition_parallelism=args.partition_parallelism,
            )
            print(f"compiled {out}", file=sys.stderr)
        elif args.cmd == "run-local":
            raw = dict(_set_args(args.raw))
            res = run_local(
                args.workdir,
                preset=args.preset,
                max_steps=args.max_steps,
                partitions=args.partitions,
                raw={k: str(v) for k, v in raw.items()},
                tracking_uri=args.tracking_uri,
            )
            for m in res["metrics"]:
                print(m)
            print(f"report: {res['report']}", file=sys.stderr)
        else:
            run = submit(args.host, args.experiment, validate_image(args.image), _set_args(args.set), args.run_name)
            print(f"submitted run {run.run_id}", file=sys.stderr)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
