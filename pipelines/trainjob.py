"""Multi-node pretraining as a Kubeflow Trainer v2 TrainJob (runtime `torch-distributed`).

Every pod runs `torchrun -m components.pretrain <the dvc.yaml stage's arguments>` in the project image; the
Trainer's torch plugin sets PET_NNODES / PET_NPROC_PER_NODE / PET_NODE_RANK / PET_MASTER_ADDR / PET_MASTER_PORT,
which torchrun reads, so the rendezvous is `env://` exactly as with a local `torchrun`. Caches and checkpoints
live on a shared PVC (ReadWriteMany for more than one node); rank 0 writes the checkpoints, and a re-submitted
job resumes from the newest one.

    from pipelines import trainjob
    out = trainjob.run(image=..., config="configs/pretrain/xkd_base.yaml", clips=..., spectrograms=...,
                       output="/data/outputs/pretrain", nodes=4, gpus_per_node=8, pvc_name="xkd-data")

The service account of the calling pod needs the RBAC in `pipelines/rbac.yaml`; the cluster needs Kubeflow Trainer
v2.2 or newer (`spec.runtimePatches`; the job is created with strict field validation, so an older Trainer
refuses it instead of dropping the field). The pods run as the image's user with an fsGroup, so that user can
write the PVC. A refused create raises TrainJobRejected naming the cause (pipelines/k8s_errors.py).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from kubeflow_trainer_api import models as tm

from pipelines.k8s import (
    DATA_MOUNT,
    GPU_RESOURCE,
    IMAGE_GID,
    IMAGE_UID,
    MLFLOW_SECRET,
    MLFLOW_SECRET_KEYS,
    RUNTIME_PATCH_MANAGER,
    SHM_MOUNT,
    SHM_SIZE,
    TRAINER_RUNTIME,
)
from pipelines.k8s_errors import classify

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
NODE_JOB = "node"  # the torch-distributed runtime's replicated job and container name
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class TrainJobFailed(RuntimeError):
    """The TrainJob reached condition Failed; the message carries the controller's reason and message."""


class TrainJobTimeout(TimeoutError):
    """Neither Complete nor Failed within the timeout."""


class TrainJobRejected(RuntimeError):
    """The API server refused to create the TrainJob; the message names the cause and what to do."""


def pretrain_args(
    config: str,
    clips: str,
    spectrograms: str | None,
    output: str,
    max_steps: int | None = None,
    overrides: list[str] = (),
    mlflow_parent: str | None = None,
    on_new_config: str = "restart",
) -> list[str]:
    """`components.pretrain` arguments, in the order the dvc.yaml `pretrain` stage writes them (a changed config
    starts over, as `dvc exp run -S ...` needs; the cleared run is named in the log)."""
    args = ["--config", config, "--clips", clips]
    args += ["--spectrograms", spectrograms] if spectrograms else []
    args += ["--output", output]
    args += ["--max-steps", str(max_steps)] if max_steps is not None else []
    args += ["--on-new-config", on_new_config]
    for o in overrides:
        args += ["--set", o]
    args += ["--mlflow-parent", mlflow_parent] if mlflow_parent else []
    return args


def job_name(output: str, mlflow_parent: str | None) -> str:
    """Deterministic per (output, pipeline run): a retried launcher finds its own job instead of a second one."""
    digest = hashlib.sha256(f"{output}\0{mlflow_parent or ''}".encode()).hexdigest()[:10]
    return f"xkd-pretrain-{digest}"


def build(
    name: str,
    image: str,
    args: list[str],
    *,
    nodes: int,
    gpus_per_node: int,
    pvc_name: str,
    mount_path: str = DATA_MOUNT,
    runtime: str = TRAINER_RUNTIME,
    tracking_uri: str | None = None,
    mlflow_secret: str | None = MLFLOW_SECRET,
    node_selector: dict | None = None,
    tolerations: list[dict] | None = None,
    shm_size: str = SHM_SIZE,
    namespace: str | None = None,
    active_deadline_s: int | None = None,
) -> tm.TrainerV1alpha1TrainJob:
    """The TrainJob object (official Trainer API models; pydantic validates every field)."""
    env = [tm.IoK8sApiCoreV1EnvVar(name="MLFLOW_TRACKING_URI", value=tracking_uri)] if tracking_uri else []
    if mlflow_secret:
        env += [
            tm.IoK8sApiCoreV1EnvVar(
                name=var,
                value_from=tm.IoK8sApiCoreV1EnvVarSource(
                    secret_key_ref=tm.IoK8sApiCoreV1SecretKeySelector(name=mlflow_secret, key=key, optional=True)
                ),
            )
            for key, var in MLFLOW_SECRET_KEYS.items()
        ]
    resources = (
        tm.IoK8sApiCoreV1ResourceRequirements.from_dict(
            {"limits": {GPU_RESOURCE: str(gpus_per_node)}, "requests": {GPU_RESOURCE: str(gpus_per_node)}}
        )
        if gpus_per_node
        else None
    )
    pod = tm.TrainerV1alpha1PodSpecPatch(
        volumes=[
            tm.IoK8sApiCoreV1Volume(
                name="data",
                persistent_volume_claim=tm.IoK8sApiCoreV1PersistentVolumeClaimVolumeSource(claim_name=pvc_name),
            ),
            tm.IoK8sApiCoreV1Volume.from_dict(
                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}}
            ),
        ],
        containers=[
            tm.TrainerV1alpha1ContainerPatch(
                name=NODE_JOB,
                volume_mounts=[
                    tm.IoK8sApiCoreV1VolumeMount(name="data", mount_path=mount_path),
                    tm.IoK8sApiCoreV1VolumeMount(name="dshm", mount_path=SHM_MOUNT),
                ],
            )
        ],
        node_selector=dict(node_selector or {}) or None,
        tolerations=[tm.IoK8sApiCoreV1Toleration.from_dict(t) for t in tolerations or []] or None,
        # the image's user; fsGroup makes the kubelet give the PVC to that group (group-writable), so uid 10001
        # can write a volume created root-owned; OnRootMismatch skips the recursive chown once it is done
        security_context=tm.IoK8sApiCoreV1PodSecurityContext(
            run_as_user=IMAGE_UID,
            run_as_group=IMAGE_GID,
            run_as_non_root=True,
            fs_group=IMAGE_GID,
            fs_group_change_policy="OnRootMismatch",
        ),
    )
    patch = tm.TrainerV1alpha1RuntimePatch(
        manager=RUNTIME_PATCH_MANAGER,
        training_runtime_spec=tm.TrainerV1alpha1TrainingRuntimeSpecPatch(
            template=tm.TrainerV1alpha1JobSetTemplatePatch(
                spec=tm.TrainerV1alpha1JobSetSpecPatch(
                    replicated_jobs=[
                        tm.TrainerV1alpha1ReplicatedJobPatch(
                            name=NODE_JOB,
                            template=tm.TrainerV1alpha1JobTemplatePatch(
                                spec=tm.TrainerV1alpha1JobSpecPatch(
                                    template=tm.TrainerV1alpha1PodTemplatePatch(spec=pod)
                                )
                            ),
                        )
                    ]
                )
            )
        ),
    )
    return tm.TrainerV1alpha1TrainJob(
        api_version=f"{GROUP}/{VERSION}",
        kind=KIND,
        metadata=tm.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=name, namespace=namespace, labels={"app.kubernetes.io/part-of": "xkd-pipeline"}
        ),
        spec=tm.TrainerV1alpha1TrainJobSpec(
            runtime_ref=tm.TrainerV1alpha1RuntimeRef(name=runtime, kind="ClusterTrainingRuntime", api_group=GROUP),
            trainer=tm.TrainerV1alpha1Trainer(
                image=image,
                command=["torchrun", "-m", "components.pretrain"],
                args=list(args),
                env=env or None,
                num_nodes=nodes,
                num_proc_per_node=max(gpus_per_node, 1),
                resources_per_node=resources,
            ),
            runtime_patches=[patch],
            active_deadline_seconds=active_deadline_s,
        ),
    )


def condition(obj: dict) -> tuple[str, str] | None:
    """("Complete" | "Failed", reason: message) once the job has finished, else None."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return c["type"], f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
    return None


def rejection(exc, namespace: str, name: str) -> str:
    """One line: why the API server refused to create the TrainJob, and what to do about it."""
    r = classify(exc)
    job = f"TrainJob {namespace}/{name}"
    if r.cause == "webhook-denied":
        return f"the Kubeflow Trainer admission webhook {r.webhook} refused {job} (HTTP {r.status}): {r.detail}"
    if r.cause == "webhook-unreachable":
        return f"{job}: the API server could not reach the Trainer webhook {r.webhook}: {r.detail}; is it running?"
    if r.cause == "unknown-field":
        return (
            f"{job}: this cluster's TrainJob CRD has no {', '.join(r.fields)} (refused under strict field "
            f"validation, not silently dropped): Kubeflow Trainer older than v2.2 is installed; this launcher needs "
            f"v2.2 or newer (spec.runtimePatches)"
        )
    if r.cause == "forbidden":
        return (
            f"not allowed to create {job} (HTTP 403, RBAC): {r.detail}; bind the pipeline's service account to "
            f"the Role in pipelines/rbac.yaml"
        )
    if r.cause == "invalid":
        return f"{job} does not validate against the cluster's TrainJob CRD (HTTP 422): {r.detail}"
    if r.cause == "not-found":
        return f"cannot create {job} (HTTP 404): {r.detail}; is Kubeflow Trainer installed, and the namespace there?"
    return f"cannot create {job}: HTTP {r.status} {r.reason}: {r.detail}"


def launch(
    api,
    job: tm.TrainerV1alpha1TrainJob,
    namespace: str,
    *,
    timeout_s: float = 86400.0,
    poll_s: float = 30.0,
    keep: bool = False,
    log: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict:
    """Create `job` (or adopt one of the same name: a retried launcher), poll until Complete/Failed or the
    timeout, then delete it unless `keep` (a failed or timed-out job is kept for `kubectl describe` only when
    `keep`). `api` is a kubernetes.client.CustomObjectsApi. Returns the final object."""
    from kubernetes.client.exceptions import ApiException

    name = job.metadata.name
    body = job.to_dict()
    try:
        # Strict: a field the cluster's CRD lacks (runtimePatches before Trainer v2.2) is an error, not pruned
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict")
        log(
            f"created TrainJob {namespace}/{name}: {job.spec.trainer.num_nodes} node(s) x "
            f"{job.spec.trainer.num_proc_per_node} process(es)"
        )
    except ApiException as e:
        if e.status != 409:
            raise TrainJobRejected(rejection(e, namespace, name)) from None
        log(f"TrainJob {namespace}/{name} exists (a retried launcher): waiting for it")
    deadline, obj = clock() + timeout_s, None
    try:
        while True:
            obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            done = condition(obj)
            if done and done[0] == "Complete":
                log(f"TrainJob {name} complete")
                return obj
            if done:
                raise TrainJobFailed(f"TrainJob {namespace}/{name} failed: {done[1]}")
            if clock() >= deadline:
                raise TrainJobTimeout(f"TrainJob {namespace}/{name} not finished after {timeout_s:g} s")
            sleep(poll_s)
    finally:
        if not keep:
            try:
                api.delete_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Foreground"
                )
                log(f"deleted TrainJob {name}")
            except ApiException as e:
                if e.status != 404:
                    log(f"warning: could not delete TrainJob {name}: HTTP {e.status} {e.reason}")


def run(
    *,
    image: str,
    config: str,
    clips: str,
    spectrograms: str | None,
    output: str,
    nodes: int,
    gpus_per_node: int,
    pvc_name: str,
    max_steps: int | None = None,
    overrides: list[str] = (),
    tracking_uri: str | None = None,
    mlflow_parent: str | None = None,
    mount_path: str = DATA_MOUNT,
    namespace: str | None = None,
    runtime: str = TRAINER_RUNTIME,
    node_selector: dict | None = None,
    tolerations: list[dict] | None = None,
    mlflow_secret: str | None = MLFLOW_SECRET,
    timeout_s: float = 7 * 86400.0,
    poll_s: float = 30.0,
    keep: bool = False,
    api=None,
) -> str:
    """Build, launch and wait for the pretraining TrainJob; returns `output` (the pretraining directory)."""
    if api is None:
        from kubernetes import client
        from kubernetes import config as kconfig

        try:
            kconfig.load_incluster_config()
        except kconfig.ConfigException:
            kconfig.load_kube_config()
        api = client.CustomObjectsApi()
    namespace = namespace or (SA_NAMESPACE.read_text().strip() if SA_NAMESPACE.exists() else "default")
    args = pretrain_args(config, clips, spectrograms, output, max_steps, list(overrides), mlflow_parent)
    job = build(
        job_name(output, mlflow_parent),
        image,
        args,
        nodes=int(nodes),
        gpus_per_node=int(gpus_per_node),
        pvc_name=pvc_name,
        mount_path=mount_path,
        runtime=runtime,
        tracking_uri=tracking_uri,
        mlflow_secret=mlflow_secret,
        node_selector=node_selector,
        tolerations=tolerations,
        namespace=namespace,
    )
    launch(api, job, namespace, timeout_s=timeout_s, poll_s=poll_s, keep=keep)
    return output
