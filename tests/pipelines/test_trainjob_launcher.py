"""The TrainJob launcher: the object validates against the official Trainer API models, its pod command is the
dvc.yaml pretrain stage's, and create/poll/fail/timeout/delete run against a FAKE local API server
(tests/pipelines/fake_k8s_api.py - no real cluster is reachable here)."""

import shlex
from pathlib import Path

import pydantic
import pytest
import yaml
from fake_k8s_api import FakeApiServer, finished
from kubeflow_trainer_api import models as tm
from sample_trainjob import sample_job

from pipelines import trainjob

REPO = Path(__file__).resolve().parents[2]


def dvc_pretrain_cmd() -> list[str]:
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["pretrain"]["cmd"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    text = stage.replace("${pretrain.config}", str(params["pretrain"]["config"])).replace(
        "${pretrain.max_steps}", str(params["pretrain"]["max_steps"])
    )
    assert "${" not in text, text
    return shlex.split(text)


def test_pod_command_is_the_dvc_stage_under_torchrun():
    dvc = dvc_pretrain_cmd()
    assert dvc[:3] == ["python", "-m", "components.pretrain"]
    flags = dict(zip(dvc[3::2], dvc[4::2]))
    args = trainjob.pretrain_args(
        flags["--config"], flags["--clips"], flags["--spectrograms"], flags["--output"], int(flags["--max-steps"])
    )
    job = trainjob.build("j", "img:1.0", args, nodes=2, gpus_per_node=8, pvc_name="p")
    assert job.spec.trainer.command == ["torchrun", "-m", "components.pretrain"]
    assert job.spec.trainer.args == dvc[3:]
    # the pipeline run's parent MLflow run is the only argument added on the cluster
    assert trainjob.pretrain_args("a", "b", "c", "d", 2, mlflow_parent="r")[-2:] == ["--mlflow-parent", "r"]


def test_trainjob_validates_against_the_trainer_api_models():
    body = sample_job().to_dict()
    again = tm.TrainerV1alpha1TrainJob.from_dict(body)  # pydantic validation of every field
    assert again.to_dict() == body
    assert body["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and body["kind"] == "TrainJob"
    spec = body["spec"]
    assert spec["runtimeRef"] == {
        "name": "torch-distributed",
        "kind": "ClusterTrainingRuntime",
        "apiGroup": "trainer.kubeflow.org",
    }
    assert spec["trainer"]["numNodes"] == 2 and spec["trainer"]["numProcPerNode"] == 8
    assert spec["trainer"]["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "8"}
    assert spec["trainer"]["image"] == "registry.example.org/xkd:0.1.0"
    pod = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert pod["name"] == "node"
    pod = pod["template"]["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["data"]["persistentVolumeClaim"] == {"claimName": "xkd-data"}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts == {"data": "/data", "dshm": "/dev/shm"} and pod["containers"][0]["name"] == "node"
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    env = {e["name"]: e for e in spec["trainer"]["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000"
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlflow-credentials",
        "key": "password",
        "optional": True,
    }
    # the models refuse a wrongly typed field, naming it
    with pytest.raises(pydantic.ValidationError, match=r"numNodes\n  Input should be a valid integer"):
        tm.TrainerV1alpha1TrainJob.from_dict(
            {**body, "spec": {**spec, "trainer": {**spec["trainer"], "numNodes": "two"}}}
        )


def _launch(fake, **kw):
    logs = []
    t = [0.0]
    kw = {"timeout_s": 100.0, "poll_s": 10.0, **kw}
    out = trainjob.launch(
        fake.client(),
        sample_job(),
        "team",
        log=logs.append,
        clock=lambda: t[0],
        sleep=lambda s: t.__setitem__(0, t[0] + s),
        **kw,
    )
    return out, logs


def test_launcher_creates_polls_until_complete_and_deletes():
    with FakeApiServer([{}, {}, finished("Complete", "JobSetCompleted", "done")]) as fake:
        obj, logs = _launch(fake)
        assert obj["status"]["conditions"][0]["type"] == "Complete" and fake.gets == 3
        methods = [m for m, _ in fake.requests]
        assert methods == ["POST", "GET", "GET", "GET", "DELETE"]
        assert fake.requests[0][1].split("?")[0] == "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team/trainjobs"
        assert not fake.objects and any("deleted" in line for line in logs)


def test_launcher_surfaces_the_failure_reason_and_keeps_the_job_when_asked():
    status = finished("Failed", "TrainingRuntimeNotFound", "ClusterTrainingRuntime torch-distributed not found")
    with FakeApiServer([{}, status]) as fake:
        with pytest.raises(trainjob.TrainJobFailed, match="TrainingRuntimeNotFound: ClusterTrainingRuntime"):
            _launch(fake, keep=True)
        assert len(fake.objects) == 1 and "DELETE" not in [m for m, _ in fake.requests]


def test_launcher_times_out_and_deletes_the_job():
    with FakeApiServer([{}]) as fake:
        with pytest.raises(trainjob.TrainJobTimeout, match="not finished after 100 s"):
            _launch(fake)
        assert fake.gets == 11 and not fake.objects  # polls at t = 0, 10, ..., 100


def test_a_retried_launcher_adopts_its_existing_job():
    with FakeApiServer([finished("Complete")]) as fake:
        fake.objects[("trainer.kubeflow.org", "team", "trainjobs", "xkd-pretrain-x")] = {"metadata": {}}
        _, logs = _launch(fake)
        assert any("exists" in line for line in logs) and not fake.objects


def test_run_returns_the_output_dir_and_names_jobs_per_pipeline_run():
    with FakeApiServer([finished("Complete")]) as fake:
        out = trainjob.run(
            image="img:1.0",
            config="c.yaml",
            clips="/data/c",
            spectrograms="/data/s",
            output="/data/outputs/pretrain",
            nodes=2,
            gpus_per_node=1,
            pvc_name="p",
            namespace="team",
            mlflow_parent="abc",
            poll_s=0.0,
            api=fake.client(),
        )
        assert out == "/data/outputs/pretrain"
    assert trainjob.job_name("/o", "a") != trainjob.job_name("/o", "b") == trainjob.job_name("/o", "b")
    assert len(trainjob.job_name("/o", "a")) <= 63


def test_rbac_manifest_is_valid_and_grants_what_the_launcher_calls():
    import kubernetes_validate

    docs = [d for d in yaml.safe_load_all((REPO / "pipelines" / "rbac.yaml").read_text()) if d]
    for d in docs:
        kubernetes_validate.validate(d, "1.31", strict=True)
    rules = [r for d in docs if d["kind"] == "Role" for r in d["rules"]]
    verbs = {
        v
        for r in rules
        if "trainer.kubeflow.org" in r["apiGroups"] and "trainjobs" in r["resources"]
        for v in r["verbs"]
    }
    assert {"create", "get", "delete"} <= verbs
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == next(d for d in docs if d["kind"] == "Role")["metadata"]["name"]
