"""The compiled KFP IR: every task, both ParallelFors, the fan-in, GPUs, PVC, /dev/shm, retries, caching, the
image parameter - asserted on the YAML itself (some kfp releases silently dropped GPU requests)."""

import ast
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pipelines import xkd_pipeline as xp

REPO = Path(__file__).resolve().parents[2]
IMAGE = "registry.example.org/xkd@sha256:" + "0" * 64


@pytest.fixture(scope="module")
def ir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ir") / "xkd.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.xkd_pipeline", "compile", "--output", str(out), "--image", IMAGE],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def tasks(spec) -> dict[str, dict]:
    """Every task of every DAG, by name: {name: (dag component, task)}."""
    dags = {"root": spec["root"]["dag"], **{k: c["dag"] for k, c in spec["components"].items() if "dag" in c}}
    return {t: (d, task) for d, dag in dags.items() for t, task in dag["tasks"].items()}


def test_every_step_is_a_task(ir):
    names = set(tasks(ir[0]))
    for step in (
        "mlflow-parent-run",
        "partition-inputs",
        "extract-clips",
        "cache-spectrograms",
        "merge-partitions",
        "merge-partitions-2",
        "cache-eval-spectrograms",
        "pretrain",
        "pretrain-trainjob",
        "pretrain-trainjob-2",
        "select-checkpoint",
        "evaluate",
        "report",
    ):
        assert step in names, step
    order = tasks(ir[0])
    assert "select-checkpoint" in order["for-loop-6"][1]["dependentTasks"]
    assert "merge-partitions-2" in order["condition-branches-2"][1]["dependentTasks"]


def test_parallel_fors_over_partitions_and_eval_specs(ir):
    spec = ir[0]
    loops = {t["taskInfo"]["name"]: (n, t) for n, t in spec["root"]["dag"]["tasks"].items() if "parameterIterator" in t}
    name, parts = loops["partitions"]
    assert parts["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--partition-inputs-Output"}
    assert set(spec["components"][f"comp-{name}"]["dag"]["tasks"]) == {"extract-clips", "cache-spectrograms"}
    name, ev = loops["eval-specs"]
    assert ev["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--eval_specs"}
    assert ev["iteratorPolicy"]["parallelismLimit"] == 4
    assert set(spec["components"][f"comp-{name}"]["dag"]["tasks"]) == {"evaluate"}
    # the fan-ins: dsl.Collected of the loop outputs
    root = spec["root"]["dag"]["tasks"]
    assert root["report"]["inputs"]["artifacts"]["metrics"]["taskOutputArtifact"]["producerTask"] == name
    merge = root["merge-partitions"]["inputs"]["parameters"]["partitions"]["taskOutputParameter"]
    assert merge["producerTask"] == loops["partitions"][0]
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    assert defaults["eval_specs"]["defaultValue"] == xp.default_eval_specs(xp.load_params())
    assert defaults["image"]["defaultValue"] == IMAGE


def test_gpu_tasks_request_accelerators_and_shm(ir):
    spec, k8s = ir
    for ex in ("exec-pretrain", "exec-evaluate"):
        res = spec["deploymentSpec"]["executors"][ex]["container"]["resources"]
        assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert res["accelerator"]["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--gpus']}}"
        assert res["resourceCpuRequest"] and res["resourceMemoryRequest"]
        shm = k8s[ex]["emptyDirMounts"]
        assert shm == [{"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": xp.SHM_SIZE, "volumeName": "dshm"}]
        assert k8s[ex]["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"].endswith("node_selector")
        assert k8s[ex]["tolerations"][0]["tolerationJson"]["componentInputParameter"].endswith("tolerations")
    cpu_only = [
        e
        for e, x in spec["deploymentSpec"]["executors"].items()
        if "accelerator" not in (x["container"].get("resources") or {})
    ]
    assert "exec-extract-clips" in cpu_only and "exec-pretrain-trainjob" in cpu_only


def test_every_task_mounts_the_pvc_and_runs_the_image_parameter(ir):
    spec, k8s = ir
    for name, ex in spec["deploymentSpec"]["executors"].items():
        assert ex["container"]["image"] == "{{$.inputs.parameters['pipelinechannel--image']}}", name
        mounts = k8s[name]["pvcMount"]
        assert [m["mountPath"] for m in mounts] == ["/data"], name
        assert mounts[0]["pvcNameParameter"]["componentInputParameter"].endswith("pvc_name"), name
        assert k8s[name]["secretAsEnv"][0]["secretNameParameter"]["componentInputParameter"].endswith("mlflow_secret")


def test_retries_on_data_steps_and_no_caching_for_pretrain(ir):
    every = tasks(ir[0])
    for name in (
        "partition-inputs",
        "extract-clips",
        "cache-spectrograms",
        "merge-partitions",
        "merge-partitions-2",
        "cache-eval-spectrograms",
    ):
        assert every[name][1]["retryPolicy"]["maxRetryCount"] == 3, name
    for name in ("pretrain", "pretrain-trainjob", "pretrain-trainjob-2", "select-checkpoint", "evaluate"):
        assert "retryPolicy" not in every[name][1], name
        assert every[name][1]["cachingOptions"] == {}, name  # enableCache false


def test_every_placeholder_resolves_in_its_dag(ir):
    """kfp 2.17.3 drops pipeline parameters used only by resource setters from sub-DAG inputs; the pipeline
    registers them. Every componentInputParameter a task reads must be an input of its enclosing DAG."""
    spec = ir[0]
    comps = {"root": spec["root"], **spec["components"]}
    for dag, task in tasks(spec).values():
        available = set((comps[dag].get("inputDefinitions") or {}).get("parameters", {}))
        for value in (task.get("inputs") or {}).get("parameters", {}).values():
            if "componentInputParameter" in value:
                assert value["componentInputParameter"] in available, (dag, task["taskInfo"])


def test_multi_node_and_multi_gpu_branches_launch_a_trainjob(ir):
    spec = ir[0]
    branches = spec["components"]["comp-condition-branches-2"]["dag"]["tasks"]
    conds = sorted(t["triggerPolicy"]["condition"] for t in branches.values())
    assert any("pipelinechannel--nodes" in c and "> 1" in c for c in conds)
    assert any("pipelinechannel--gpus" in c and "> 1" in c for c in conds)


def _component_bodies():
    for name, obj in vars(xp).items():
        fn = getattr(obj, "python_func", None)
        if fn is not None and fn.__module__ == xp.__name__:
            yield name, ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]


def test_each_component_body_calls_exactly_one_step_function():
    bodies = dict(_component_bodies())
    assert len(bodies) >= 12
    for name, fn in bodies.items():
        modules = {
            a.asname or a.name
            for n in ast.walk(fn)
            if isinstance(n, ast.ImportFrom) and n.module.split(".")[0] in ("components", "pipelines", "xkd")
            for a in n.names
        }
        calls = [
            n
            for n in ast.walk(fn)
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and isinstance(n.func.value, ast.Name)
            and n.func.value.id in modules
        ]
        assert len(calls) == 1, (name, [ast.unparse(c.func) for c in calls])
        assert calls[0].func.attr in ("run", "write_partitions", "merge", "parent_run_id"), name
        assert not [n for n in ast.walk(fn) if isinstance(n, (ast.If, ast.For, ast.While, ast.Try))], name


@pytest.mark.parametrize(
    "image", ["xkd:0.1.0", "registry.example.org:5000/team/xkd:2026.11.1", "ghcr.io/o/xkd@sha256:" + "a" * 64]
)
def test_pinned_images_are_accepted(image):
    assert xp.validate_image(image) == image


@pytest.mark.parametrize("image", ["xkd", "xkd:latest", "ghcr.io/o/xkd:main", "xkd@sha256:abc", "", "XKD:1"])
def test_floating_or_malformed_images_are_refused(image):
    with pytest.raises(xp.UsageError, match="must be pinned"):
        xp.validate_image(image)


def test_compile_cli_refuses_an_unpinned_image_in_one_line(tmp_path, capsys):
    assert xp.main(["compile", "--output", str(tmp_path / "x.yaml"), "--image", "xkd:latest"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: image 'xkd:latest' must be pinned")
    assert not (tmp_path / "x.yaml").exists()
