"""`make e2e`: the project image (built by `make image`) proven in containers on this machine.

1. KFP: the whole DAG under kfp.local.DockerRunner, every task a container of the image, talking to docker or to
   `podman system service` (its Docker-compatible socket), on the micro sample data; its metrics.json and encoder
   bundle must equal those of `dvc repro` of the same stages run beside it in this venv.
2. TrainJob: the exact command and env of the TrainJob pipelines/trainjob.py builds, as two "nodes" (two
   containers on one network) with the PET_* env and master address the Trainer's torch plugin sets
   (`<job>-node-0-0.<job>`, port 29500). First on a root-owned volume, where the image's user must fail with a
   PermissionError; then on the same volume made what fsGroup makes of it (group = the pod's fsGroup,
   group-writable, setgid), where both nodes must finish and rank 0 must write the checkpoints.

Prints and writes (e2e_summary.json in the work folder, kept when the run fails or KEEP=1) the wall times and the
image size. Environment: IMAGE (default the components' image tag), ENGINE (docker | podman), KEEP=1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "pipelines")]

from pipelines import trainjob  # noqa: E402
from pipelines.images import PLACEHOLDER_IMAGE  # noqa: E402
from pipelines.k8s import DATA_MOUNT, SHM_MOUNT  # noqa: E402

IMAGE = os.environ.get("IMAGE", PLACEHOLDER_IMAGE)
APP_CONFIG = "/app/configs/pretrain/tiny.yaml"  # the tiny preset, as the image holds it
MASTER_PORT = (
    29500  # the Trainer's ContainerTrainerPort (pkg/constants), which its torch plugin puts in PET_MASTER_PORT
)
# podman in this kind of container: runc, and explicit limits (its defaults exceed what the host grants)
ULIMITS = {"nofile": 20000, "nproc": 32768}


class E2EFailed(AssertionError):
    pass


def check(ok: bool, what: str) -> None:
    if not ok:
        raise E2EFailed(what)
    print(f"ok: {what}", flush=True)


def engine() -> str:
    return subprocess.run(
        [str(REPO / "container" / "engine.sh")], check=True, capture_output=True, text=True
    ).stdout.strip()


def engine_cmd(eng: str) -> list[str]:
    return [eng, "--runtime", "runc"] if eng == "podman" else [eng]


def image_size(eng: str) -> int:
    out = subprocess.run([eng, "image", "inspect", "--format", "{{.Size}}", IMAGE], capture_output=True, text=True)
    if out.returncode:
        raise E2EFailed(f"image {IMAGE} not found ({out.stderr.strip()}): run `make image` first")
    return int(out.stdout.strip())


def start_socket(eng: str, work: Path) -> tuple[subprocess.Popen | None, str | None]:
    """The Docker API kfp's DockerRunner talks to: podman's compatible service on a private socket (or docker's)."""
    if eng != "podman":
        return None, None
    sock = work / "podman.sock"
    proc = subprocess.Popen(
        [*engine_cmd(eng), "system", "service", "--time=0", f"unix://{sock}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        if sock.exists():
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(sock))
                return proc, f"unix://{sock}"
            except OSError:
                pass
        time.sleep(0.2)
    proc.kill()
    raise E2EFailed("podman system service did not open its socket within 20 s")


def run_container(client, image, command, volumes, **kwargs) -> int:
    """Replaces kfp.local's docker_task_handler.run_docker_container: the image's ENTRYPOINT is replaced by the
    task's command as Kubernetes does (the image's `python -m` would otherwise prefix it), and the container is not
    auto-removed (podman 4.3 removes it before `wait` answers, and kfp then takes the task for a success)."""
    # kfp.local leaves a task image set from a pipeline parameter unresolved: run the image under test
    image = IMAGE if "{{" in image else image
    container = client.containers.run(
        image=image, entrypoint=command[:1], command=command[1:], detach=True, volumes=volumes, **kwargs
    )
    try:
        for line in container.logs(stream=True):
            print(line.decode(errors="replace"), end="")
        return container.wait()["StatusCode"]
    finally:
        container.remove(force=True)


def fsgroup(path: Path, gid: int) -> None:
    """What the kubelet does to a volume for a pod's fsGroup: group ownership, group rw, setgid directories."""
    for p in [path, *path.rglob("*")]:
        os.chown(p, -1, gid, follow_symlinks=False)
        if not p.is_symlink():
            os.chmod(p, p.stat().st_mode | 0o060 | (0o2010 if p.is_dir() else 0))


def kfp_in_containers(eng: str, work: Path, docker_host: str | None, uid: int, gid: int) -> dict:
    import docker
    from kfp import local
    from kfp.local import docker_task_handler
    from test_pipeline_local import SPECS, assert_same_bundle, comparable, micro_inputs, start_dvc

    from pipelines.local import run_local

    if docker_host:
        os.environ["DOCKER_HOST"] = docker_host
    kfp_work = work / "kfp"
    kfp_work.mkdir()
    fsgroup(kfp_work, gid)  # the folder playing the PVC, writable by the image's user as a fsGroup volume is
    inputs = micro_inputs(kfp_work / "inputs")
    fsgroup(kfp_work, gid)
    t0 = time.monotonic()
    dvc = start_dvc(work / "dvc", inputs)
    docker_task_handler.run_docker_container = run_container
    # mount the whole folder playing the PVC (inputs, caches, outputs; the pipeline root is inside it), not only
    # the pipeline root kfp.local mounts
    docker_task_handler.DockerTaskHandler.get_volumes_to_mount = lambda self, client=None: {
        str(kfp_work): {"bind": str(kfp_work), "mode": "rw"}
    }
    runner = local.DockerRunner(
        user=f"{uid}:{gid}",
        ulimits=[docker.types.Ulimit(name=k, soft=v, hard=v) for k, v in ULIMITS.items()],
    )
    try:
        result = run_local(
            kfp_work,
            runner=runner,
            max_steps=2,
            partitions=2,
            eval_specs=SPECS,
            raw={k: str(v) for k, v in inputs.items()},
            pretrain_config=APP_CONFIG,
        )
        kfp_s = time.monotonic() - t0
    finally:
        out, _ = dvc.communicate(timeout=1800)
    dvc_s = time.monotonic() - t0
    check(dvc.returncode == 0, f"dvc repro of the micro data in this venv ({out[-2000:] if dvc.returncode else ''})")
    kfp_metrics = [Path(p) for p in result["metrics"]]
    dvc_metrics = sorted((work / "dvc" / "outputs" / "eval").glob("*/metrics.json"))
    check(len(kfp_metrics) == len(dvc_metrics) == len(SPECS), f"one metrics.json per spec ({len(kfp_metrics)})")
    a, b = comparable(kfp_metrics[0]), comparable(dvc_metrics[0])
    differ = {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    check(not differ, f"the containers' metrics.json equals dvc repro's (differing: {differ})")
    kfp_bundle = Path(json.loads(kfp_metrics[0].read_text())["encoder"])
    assert_same_bundle(kfp_bundle, work / "dvc" / "outputs" / "select" / "bundle")
    check(True, "the containers' selected encoder bundle equals dvc repro's, tensor for tensor")
    check(bool(result["report"]) and Path(result["report"]).read_text().strip() != "", "the report was written")
    return {
        "kfp_docker_runner_s": round(kfp_s, 1),
        "dvc_repro_done_s": round(dvc_s, 1),
        "caches": str(kfp_work / "cache"),
    }


def baked_commit(eng: str) -> str:
    """The commit the image's lineage code reports (no .git in the image: XKD_GIT_COMMIT, baked in at build)."""
    code = "from xkd.tracking.lineage import git_commit; print(git_commit()['commit'])"
    cmd = [*engine_cmd(eng), "run", "--rm", *(f"--ulimit={k}={v}:{v}" for k, v in ULIMITS.items())]
    out = subprocess.run([*cmd, "--entrypoint", "python", IMAGE, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise E2EFailed(f"the image's lineage code failed: {out.stderr.strip()[-2000:]}")
    return out.stdout.strip()


def node_command(job, rank: int, nodes: int, vol: Path, eng: str, net: str, uid: int, gid: int, fs_gid: int):
    """`$ENGINE run` of one TrainJob node: the job's image, command, args and env, plus what the Trainer adds."""
    t, job_name = job.spec.trainer, job.metadata.name
    name = f"{job_name}-node-{rank}-0"  # JobSet pod hostname <jobset>-<replicated job>-<job index>-<pod index>
    env = {e.name: e.value for e in (t.env or []) if e.value is not None}
    env.update(
        PET_NNODES=str(nodes),
        PET_NPROC_PER_NODE=str(t.num_proc_per_node),
        PET_NODE_RANK=str(rank),
        PET_MASTER_ADDR=f"{job_name}-node-0-0.{job_name}",  # the torch plugin: <job>-node-0-0.<job>
        PET_MASTER_PORT=str(MASTER_PORT),
    )
    cmd = [*engine_cmd(eng), "run", "-d", "--name", name, "--hostname", name, "--network", net]
    cmd += ["--network-alias", f"{name}.{job_name}", "--user", f"{uid}:{gid}", "--group-add", str(fs_gid)]
    cmd += [f"--ulimit={k}={v}:{v}" for k, v in ULIMITS.items()]
    cmd += ["--shm-size=1g", "-v", f"{vol}:{DATA_MOUNT}", "--entrypoint", t.command[0]]
    for k, v in env.items():
        cmd += ["-e", f"{k}={v}"]
    return name, [*cmd, t.image, *t.command[1:], *t.args]


def run_nodes(job, nodes: int, vol: Path, eng: str, uid: int, gid: int, fs_gid: int, timeout_s: float) -> list[dict]:
    net = f"xkd-e2e-{os.getpid()}"
    subprocess.run([*engine_cmd(eng), "network", "create", net], check=True, capture_output=True)
    names = []
    try:
        for rank in range(nodes):
            name, cmd = node_command(job, rank, nodes, vol, eng, net, uid, gid, fs_gid)
            subprocess.run(cmd, check=True, capture_output=True, text=True)
            names.append(name)
        results, deadline = {}, time.monotonic() + timeout_s
        while len(results) < nodes and time.monotonic() < deadline:
            for name in names:
                state = subprocess.run(
                    [eng, "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name],
                    capture_output=True,
                    text=True,
                ).stdout.split()
                if name not in results and state and state[0] in ("exited", "stopped"):
                    results[name] = int(state[1])
                    if results[name]:  # the other node now waits at the rendezvous: 60 s more, then it is stopped
                        deadline = min(deadline, time.monotonic() + 60)
            time.sleep(2)
        out = []
        for name in names:
            logs = subprocess.run([eng, "logs", name], capture_output=True, text=True)
            out.append({"name": name, "exit": results.get(name), "logs": logs.stdout + logs.stderr})
        return out
    finally:
        for name in names:
            subprocess.run([eng, "rm", "-f", name], capture_output=True)
        subprocess.run([eng, "network", "rm", "-f", net], capture_output=True)


def trainjob_in_containers(eng: str, work: Path, caches: Path) -> dict:
    nodes = 2
    args = trainjob.pretrain_args(
        APP_CONFIG,
        f"{DATA_MOUNT}/cache/samples-av/clips",
        f"{DATA_MOUNT}/cache/samples-av/spectrograms",
        f"{DATA_MOUNT}/outputs/pretrain",
        max_steps=2,
        # 2 micro clips over 2 processes: batches of 1; replicas compared after every step (a desync fails the run)
        overrides=["train.batch_size=1", "train.check_replicas_every=1"],
    )
    job = trainjob.build(
        trainjob.job_name(f"{DATA_MOUNT}/outputs/pretrain", None),
        IMAGE,
        args,
        nodes=nodes,
        gpus_per_node=0,
        pvc_name="xkd-data",
        # in a cluster MLflow is a server off the PVC: here a store in each container's /tmp (rank 0 logs)
        tracking_uri="sqlite:////tmp/mlflow.db",
        mlflow_secret=None,
    )
    pod = job.spec.runtime_patches[0].training_runtime_spec.template.spec.replicated_jobs[0].template.spec.template.spec
    sc = pod.security_context
    check(sc is not None and sc.fs_group is not None, "the TrainJob's pods set runAsUser/runAsGroup/fsGroup")
    check([m.mount_path for m in pod.containers[0].volume_mounts] == [DATA_MOUNT, SHM_MOUNT], "PVC and /dev/shm")
    uid, gid, fs_gid = sc.run_as_user, sc.run_as_group, sc.fs_group

    # the volume as a fresh PV often comes: root-owned, 0755, with the caches a previous step wrote
    vol = work / "pvc"
    vol.mkdir(mode=0o755)
    shutil.copytree(caches / "samples-av", vol / "cache" / "samples-av", symlinks=True)
    for p in [vol, *vol.rglob("*")]:
        os.chown(p, 0, 0, follow_symlinks=False)
    os.chmod(vol, 0o755)
    t0 = time.monotonic()
    denied = run_nodes(job, nodes, vol, eng, uid, gid, fs_gid, timeout_s=600)
    denied_s = time.monotonic() - t0
    if "PermissionError" not in denied[0]["logs"]:
        print(*(f"--- {n['name']} (exit {n['exit']}):\n{n['logs'][-4000:]}" for n in denied), sep="\n", file=sys.stderr)
    check(denied[0]["exit"] not in (None, 0), f"on a root-owned volume node 0 fails (exit {denied[0]['exit']})")
    check("PermissionError" in denied[0]["logs"], "... with a PermissionError (the fsGroup requirement)")

    fsgroup(vol, fs_gid)
    t0 = time.monotonic()
    done = run_nodes(job, nodes, vol, eng, uid, gid, fs_gid, timeout_s=1200)
    trained_s = time.monotonic() - t0
    for n in done:
        if n["exit"] != 0:
            print(n["logs"][-4000:], file=sys.stderr)
    check(all(n["exit"] == 0 for n in done), f"with fsGroup both nodes finish ({[n['exit'] for n in done]})")
    out = vol / "outputs" / "pretrain"
    ckpts = sorted(p.name for p in out.rglob("*") if p.is_file())
    check(bool(ckpts), f"rank 0 wrote the pretraining outputs ({len(ckpts)} files in {out})")
    dirs = [p for p in [out, *out.rglob("*")] if p.is_dir()]
    private = [str(p) for p in dirs if p.stat().st_mode & 0o2070 != 0o2070]
    check(not private, f"the directories the pods made are group-writable and setgid (umask 002): not so {private[:3]}")
    owner_only = sorted(p.name for p in out.rglob("*") if p.is_file() and not p.stat().st_mode & 0o040)
    if owner_only:  # written through a private temporary file: only the same uid can read them
        print(f"note: owner-only files (mode 0600): {owner_only}")
    rows = (
        [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        if (out / "metrics.jsonl").exists()
        else []
    )
    check(
        [r.get("step") for r in rows] == [1, 2], f"2 steps logged once (rank 0 only): {[r.get('step') for r in rows]}"
    )
    return {"trainjob_root_owned_s": round(denied_s, 1), "trainjob_2_nodes_s": round(trained_s, 1)}


def main() -> int:
    os.umask(0o002)  # what this process creates in the shared work folder stays writable by the image's group
    eng = engine()
    size = image_size(eng)
    from pipelines.k8s import IMAGE_GID, IMAGE_UID

    work = Path(tempfile.mkdtemp(prefix="xkd-e2e-", dir=os.environ.get("E2E_DIR")))
    os.chmod(work, 0o755)
    summary = {"engine": eng, "image": IMAGE, "image_bytes": size, "image_gb": round(size / 1e9, 2)}
    started, service, ok = time.monotonic(), None, False
    try:
        commit = baked_commit(eng)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        check(commit == head, f"the image's lineage reports commit {commit} (this checkout's HEAD: {head})")
        summary["git_commit"] = commit
        service, docker_host = start_socket(eng, work)
        summary.update(kfp_in_containers(eng, work, docker_host, IMAGE_UID, IMAGE_GID))
        summary.update(trainjob_in_containers(eng, work, Path(summary.pop("caches"))))
        ok = True
    except E2EFailed as e:
        print(f"e2e FAILED: {e}", file=sys.stderr)
    finally:
        if service:
            service.terminate()
            service.wait(timeout=30)
        summary["total_s"] = round(time.monotonic() - started, 1)
        summary["passed"] = ok
        (work / "e2e_summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary, indent=2))
        if ok and os.environ.get("KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder kept: {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
