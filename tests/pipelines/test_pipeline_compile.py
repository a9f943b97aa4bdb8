"""The compiled KFP IR: every task, both ParallelFors, the fan-in, GPUs, PVC, /dev/shm, retries, caching, the
image parameter - asserted on the YAML itself (some kfp releases silently dropped GPU requests).

Tasks are found by what they are - the Python function their executor runs, their display name, the list their
loop iterates - never by the names the compiler generates (`for-loop-6`, `merge-partitions-2`, ...), which
change whenever a task is added."""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from pipelines import dag, images, k8s
from xkd.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
IMAGE = "registry.example.org/xkd@sha256:" + "0" * 64
DATA_STEPS = ("partition_inputs", "extract_clips", "cache_spectrograms", "merge_partitions", "cache_eval_spectrograms")
TRAIN_STEPS = ("pretrain", "pretrain_trainjob", "select_checkpoint", "evaluate")


@pytest.fixture(scope="module")
def ir_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("ir") / "xkd.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.xkd_pipeline", "compile", "--output", str(out), "--image", IMAGE],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def ir(ir_file):
    spec, platform = yaml.safe_load_all(ir_file.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@dataclass
class Task:
    key: str  # the compiler's name, only used to follow references between tasks
    dag: str  # the component whose DAG holds the task ("root" for the pipeline's)
    body: dict
    fn: str | None  # the Python function the executor runs; None for a loop or condition (a sub-DAG)
    executor: str | None

    @property
    def display(self) -> str:
        return self.body["taskInfo"]["name"]

    @property
    def sub_dag(self) -> str:
        return self.body["componentRef"]["name"]


def every_task(spec) -> list[Task]:
    execs = spec["deploymentSpec"]["executors"]
    dags = {"root": spec["root"]["dag"], **{k: c["dag"] for k, c in spec["components"].items() if "dag" in c}}
    out = []
    for d, body in dags.items():
        for key, task in body["tasks"].items():
            label = spec["components"][task["componentRef"]["name"]].get("executorLabel")
            args = execs[label]["container"]["args"] if label else []
            fn = args[args.index("--function_to_execute") + 1] if label else None
            out.append(Task(key, d, task, fn, label))
    return out


def running(spec, fn: str, display: str | None = None) -> list[Task]:
    found = [t for t in every_task(spec) if t.fn == fn and display in (None, t.display)]
    assert found, (fn, display)
    return found


def one(spec, fn: str, display: str | None = None) -> Task:
    (found,) = running(spec, fn, display)
    return found


def root_task_of(spec, task: Task) -> Task:
    """The task of the pipeline's own DAG that runs `task` (itself, or the loop/condition around it)."""
    tasks = every_task(spec)
    while task.dag != "root":
        task = next(t for t in tasks if t.sub_dag == task.dag)
    return task


def loop_over(spec, parameter: str) -> Task:
    loops = [t for t in every_task(spec) if "parameterIterator" in t.body]
    (loop,) = [t for t in loops if t.body["parameterIterator"]["items"] == {"inputParameter": parameter}]
    return loop


def test_every_step_is_a_task(ir):
    spec = ir[0]
    counts = {}
    for t in every_task(spec):
        if t.fn:
            counts[t.fn] = counts.get(t.fn, 0) + 1
    # the video eval datasets' branch (extract_eval_clips, cache_eval_clip_spectrograms) is not in the default
    # eval specs; two merges (clips, spectrograms) and the TrainJob launcher in two branches (nodes, gpus)
    assert counts == {
        "mlflow_parent_run": 1,
        "partition_inputs": 1,
        "extract_clips": 1,
        "cache_spectrograms": 1,
        "merge_partitions": 2,
        "cache_eval_spectrograms": 1,
        "pretrain": 1,
        "pretrain_trainjob": 2,
        "select_checkpoint": 1,
        "evaluate": 1,
        "report": 1,
    }
    assert one(spec, "cache_eval_spectrograms").display == "cache-esc10"
    eval_loop = root_task_of(spec, one(spec, "evaluate"))
    assert eval_loop == loop_over(spec, "pipelinechannel--eval_specs")
    assert one(spec, "select_checkpoint").key in eval_loop.body["dependentTasks"]
    assert one(spec, "cache_eval_spectrograms").key in eval_loop.body["dependentTasks"]
    training = {root_task_of(spec, t).key for t in running(spec, "pretrain") + running(spec, "pretrain_trainjob")}
    assert len(training) == 1  # the three branches hang off one condition group
    (group,) = [t for t in every_task(spec) if t.key in training and t.dag == "root"]
    merged = one(spec, "merge_partitions", "merge-spectrogram-partitions")
    assert merged.key in group.body["dependentTasks"]
    assert one(spec, "merge_partitions", "merge-clip-partitions").key in merged.body["dependentTasks"]
    assert group.key in one(spec, "select_checkpoint").body["dependentTasks"]


def test_parallel_fors_over_partitions_and_eval_specs(ir):
    spec = ir[0]
    parts = loop_over(spec, "pipelinechannel--partition-inputs-Output")
    assert parts.display == "partitions" and parts.dag == "root"
    assert one(spec, "partition_inputs").key in parts.body["dependentTasks"]
    assert {t.fn for t in every_task(spec) if t.dag == parts.sub_dag} == {"extract_clips", "cache_spectrograms"}
    ev = loop_over(spec, "pipelinechannel--eval_specs")
    assert ev.display == "eval-specs" and ev.dag == "root"
    assert ev.body["iteratorPolicy"]["parallelismLimit"] == 4
    assert {t.fn for t in every_task(spec) if t.dag == ev.sub_dag} == {"evaluate"}
    # the fan-ins: dsl.Collected of the loop outputs
    metrics = one(spec, "report").body["inputs"]["artifacts"]["metrics"]["taskOutputArtifact"]
    assert metrics["producerTask"] == ev.key
    for display in ("merge-clip-partitions", "merge-spectrogram-partitions"):
        merge = one(spec, "merge_partitions", display).body["inputs"]["parameters"]["partitions"]
        assert merge["taskOutputParameter"]["producerTask"] == parts.key, display
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["eval_specs"]["defaultValue"] == dag.default_eval_specs(dag.load_params())
    assert defaults["image"]["defaultValue"] == IMAGE


def test_gpu_tasks_request_accelerators_and_shm(ir):
    spec, platform = ir
    executors = spec["deploymentSpec"]["executors"]
    for fn in ("pretrain", "evaluate"):
        ex = one(spec, fn).executor
        res = executors[ex]["container"]["resources"]
        assert res["accelerator"]["resourceType"] == k8s.GPU_RESOURCE == "nvidia.com/gpu"
        assert res["accelerator"]["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--gpus']}}"
        assert res["resourceCpuRequest"] and res["resourceMemoryRequest"]
        shm = platform[ex]["emptyDirMounts"]
        assert shm == [{"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": k8s.SHM_SIZE, "volumeName": "dshm"}]
        assert platform[ex]["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith("node_selector")
        assert platform[ex]["tolerations"][0]["tolerationJson"]["componentInputParameter"].endswith("tolerations")
    for fn in ("extract_clips", "pretrain_trainjob", "select_checkpoint"):  # the launcher pod only watches
        for t in running(spec, fn):
            assert "accelerator" not in (executors[t.executor]["container"].get("resources") or {}), fn


def test_every_task_mounts_the_pvc_and_runs_the_image_parameter(ir):
    spec, platform = ir
    for name, ex in spec["deploymentSpec"]["executors"].items():
        assert ex["container"]["image"] == "{{$.inputs.parameters['pipelinechannel--image']}}", name
        mounts = platform[name]["pvcMount"]
        assert [m["mountPath"] for m in mounts] == [k8s.DATA_MOUNT] == ["/data"], name
        assert mounts[0]["pvcNameParameter"]["componentInputParameter"].endswith("pvc_name"), name
        secret = platform[name]["secretAsEnv"][0]
        assert secret["secretNameParameter"]["componentInputParameter"].endswith("mlflow_secret"), name
        assert {k["secretKey"]: k["envVar"] for k in secret["keyToEnv"]} == k8s.MLFLOW_SECRET_KEYS, name


def test_retries_on_data_steps_and_no_caching_anywhere(ir):
    spec = ir[0]
    for fn in DATA_STEPS:
        for t in running(spec, fn):
            assert t.body["retryPolicy"]["maxRetryCount"] == 3, t.display
    for fn in TRAIN_STEPS:
        for t in running(spec, fn):
            assert "retryPolicy" not in t.body, t.display
    for t in every_task(spec):
        if t.fn:  # real outputs live on the PVC, which KFP's cache key cannot see: enableCache false everywhere
            assert t.body["cachingOptions"] == {}, t.display


def test_every_placeholder_resolves_in_its_dag(ir):
    """kfp 2.17.3 drops pipeline parameters used only by resource setters from sub-DAG inputs; the pipeline
    registers them. Every componentInputParameter a task reads must be an input of its enclosing DAG."""
    spec = ir[0]
    comps = {"root": spec["root"], **spec["components"]}
    for t in every_task(spec):
        available = set((comps[t.dag].get("inputDefinitions") or {}).get("parameters", {}))
        for value in (t.body.get("inputs") or {}).get("parameters", {}).values():
            if "componentInputParameter" in value:
                assert value["componentInputParameter"] in available, (t.dag, t.display)


def test_multi_node_and_multi_gpu_branches_launch_a_trainjob(ir):
    spec = ir[0]
    branch = {}  # the condition of the branch each pretraining task runs in -> its function
    for fn in ("pretrain", "pretrain_trainjob"):
        for t in running(spec, fn):
            cond = next(c for c in every_task(spec) if c.sub_dag == t.dag)
            branch[cond.body["triggerPolicy"]["condition"]] = fn
    n = "int(inputs.parameter_values['pipelinechannel--nodes']) > 1"
    g = "int(inputs.parameter_values['pipelinechannel--gpus']) > 1"
    assert branch == {n: "pretrain_trainjob", f"!({n}) && {g}": "pretrain_trainjob", f"!({n}) && !({g})": "pretrain"}


@pytest.mark.parametrize(
    "image", ["xkd:0.1.0", "registry.example.org:5000/team/xkd:2026.11.1", "ghcr.io/o/xkd@sha256:" + "a" * 64]
)
def test_pinned_images_are_accepted(image):
    assert images.validate_image(image) == image


@pytest.mark.parametrize("image", ["xkd", "xkd:latest", "ghcr.io/o/xkd:main", "xkd@sha256:abc", "", "XKD:1"])
def test_floating_or_malformed_images_are_refused(image):
    with pytest.raises(UsageError, match="must be pinned"):
        images.validate_image(image)


def parse_ir(path: Path) -> tuple:
    """The compiled YAML as the KFP backend reads it: the pipeline spec, its deployment config and every task's
    Kubernetes executor config parsed into their protobuf messages, any field the messages do not define being
    an error (json_format rejects unknown fields unless told to ignore them): a typo'd or misplaced setting
    fails here instead of being dropped by the backend."""
    from google.protobuf import json_format
    from kfp.kubernetes.kubernetes_executor_config_pb2 import KubernetesExecutorConfig
    from kfp.pipeline_spec import pipeline_spec_pb2 as pb

    spec_doc, platform_doc = yaml.safe_load_all(path.read_text())
    spec = json_format.ParseDict(spec_doc, pb.PipelineSpec(), ignore_unknown_fields=False)
    deployment = json_format.ParseDict(spec_doc["deploymentSpec"], pb.PipelineDeploymentConfig())
    platform = json_format.ParseDict(platform_doc, pb.PlatformSpec())
    executors = {
        name: json_format.ParseDict(config, KubernetesExecutorConfig())
        for name, config in platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items()
    }
    assert set(executors) == set(platform.platforms["kubernetes"].deployment_spec.executors)
    return spec, deployment, executors


def test_every_task_runs_as_the_image_user_in_the_strictly_parsed_ir(ir_file):
    from google.protobuf import json_format
    from kfp.kubernetes.kubernetes_executor_config_pb2 import KubernetesExecutorConfig

    spec, deployment, executors = parse_ir(ir_file)
    assert set(executors) == set(deployment.executors)  # every task's container has its config
    for name, config in executors.items():
        ctx = config.security_context  # what the backend applies to the task's container
        assert (ctx.run_as_user, ctx.run_as_group, ctx.run_as_non_root) == (k8s.IMAGE_UID, k8s.IMAGE_GID, True), name
    # the parse is strict: a field the message does not define is refused, not dropped
    with pytest.raises(json_format.ParseError, match="fsGroup"):
        json_format.ParseDict({"securityContext": {"fsGroup": "10001"}}, KubernetesExecutorConfig())


def test_scores_are_kfp_metrics_and_the_report_is_markdown_in_the_strictly_parsed_ir(ir_file, ir):
    spec, _, _ = parse_ir(ir_file)
    comps = {t.fn: t for t in every_task(ir[0]) if t.fn}
    outputs = {
        fn: {
            name: a.artifact_type.schema_title
            for name, a in spec.components[comps[fn].body["componentRef"]["name"]].output_definitions.artifacts.items()
        }
        for fn in ("evaluate", "report")
    }
    assert outputs == {
        "evaluate": {"metrics": "system.Artifact", "scores": "system.Metrics"},  # the UI's scalar metrics
        "report": {"output": "system.Artifact", "report_md": "system.Markdown"},  # rendered on the run page
    }
