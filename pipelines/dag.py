"""The XKD DAG: the tasks of `pipelines/tasks.py` wired together, with the Kubernetes side of each (PVC, GPUs,
/dev/shm, retries, caching, node placement). Caches and pretraining checkpoints stay on the PVC; only the selected
encoder bundle, metrics and the report travel as KFP artifacts."""

import os
from pathlib import Path

import yaml
from kfp import compiler, dsl
from kfp import kubernetes as k8s
from kfp.dsl.pipeline_channel import PipelineChannel

from pipelines.flags import strict_bool
from pipelines.images import PLACEHOLDER_IMAGE, validate_image
from pipelines.k8s import (
    DATA_MOUNT,
    GPU_RESOURCE,
    IMAGE_GID,
    IMAGE_UID,
    MLFLOW_SECRET,
    MLFLOW_SECRET_KEYS,
    PVC_NAME,
    SHM_MOUNT,
    SHM_SIZE,
    TRAINER_RUNTIME,
)
from pipelines.tasks import (
    cache_eval_clip_spectrograms,
    cache_eval_spectrograms,
    cache_spectrograms,
    evaluate,
    extract_clips,
    extract_eval_clips,
    merge_partitions,
    mlflow_parent_run,
    partition_inputs,
    pretrain,
    pretrain_trainjob,
    report,
    select_checkpoint,
)
from xkd.data.geometry import FPS, VIDEO_SIZE
from xkd.data.logmel import SAMPLE_RATE
from xkd.paths import REPO


def load_params(path: Path = REPO / "params.yaml") -> dict:
    """The DAG's defaults: the same params.yaml `dvc repro` reads."""
    return yaml.safe_load(path.read_text()) or {}


def default_eval_specs(params: dict) -> list[dict]:
    """params.yaml `eval.specs` (+ `eval.controls`): the items the dvc.yaml foreach stage runs, a {name: spec}
    mapping there (evaluate@<name>) or a list."""
    ev = params.get("eval") or {}
    return [s for key in ("specs", "controls") for s in _items(ev.get(key))]


def _items(specs) -> list:
    return list(specs.values()) if isinstance(specs, dict) else list(specs or [])


def eval_modalities(datasets: list[str]) -> dict[str, str]:
    from xkd.evaluation import datasets as eval_datasets

    return {ds: eval_datasets.info(ds).modality for ds in datasets}


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
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    k8s.empty_dir_mount(task, volume_name="dshm", mount_path=SHM_MOUNT, medium="Memory", size_limit=SHM_SIZE)
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
        pvc_name: str = PVC_NAME,
        data_root: str = DATA_MOUNT,
        pretrain_dataset: str = pretrain_default,
        partitions: int = 4,
        extract_fps: float = float(ex.get("fps", FPS)),
        extract_short_side: int = int(ex.get("short_side", VIDEO_SIZE)),
        extract_sample_rate: int = int(ex.get("sample_rate", SAMPLE_RATE)),
        extract_min_duration: float = float(ex.get("min_duration", 1.0)),
        extract_workers: int = int(ex.get("workers", 4)),
        extract_require_audio: bool = strict_bool(ex.get("require_audio", False), "extract.require_audio"),
        spectrogram_min_duration: float = float(sp.get("min_duration", 1.0)),
        spectrogram_workers: int = int(sp.get("workers", 4)),
        pretrain_config: str = pre.get("config", "configs/pretrain/tiny.yaml"),
        max_steps: int = pre.get("max_steps") or 0,
        pretrain_overrides: list = [],
        eval_specs: list = specs,
        mlflow_tracking_uri: str = "http://mlflow.mlflow.svc.cluster.local:5000",
        mlflow_secret: str = MLFLOW_SECRET,
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
        trainjob_runtime: str = TRAINER_RUNTIME,
        trainjob_timeout_s: int = 7 * 24 * 3600,
        keep_trainjob: bool = False,
    ):
        def pod(task, cpu=data_cpu, memory=data_memory):
            task.set_container_image(image)
            k8s.use_secret_as_env(task, mlflow_secret, MLFLOW_SECRET_KEYS, optional=True)
            # the image's user; KFP offers no fsGroup, so the PVC must be writable by this uid or gid
            # (pipelines/README.md says how)
            k8s.set_security_context(task, run_as_user=IMAGE_UID, run_as_group=IMAGE_GID, run_as_non_root=True)
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


def compile_pipeline(output: str | os.PathLike, image: str = PLACEHOLDER_IMAGE, **build) -> Path:
    validate_image(image)
    compiler.Compiler().compile(build_pipeline(image=image, **build), str(output))
    return Path(output)
