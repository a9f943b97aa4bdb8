"""The pipeline run's parent MLflow run: one per pipeline run, closed FINISHED (or FAILED) with its headline.

    parent = pipeline_parent(args.mlflow_parent)   # the step's preamble (runs.pipeline_parent calls this)
    with pipeline_step_run("evaluate:esc10-svm", args.mlflow_parent) as run:   # opened when the step starts
        ...
    finish_pipeline(parent, metrics, params)       # the fan-in (report): headline metrics + params, FINISHED

Which parent: `--mlflow-parent`, else `MLFLOW_PARENT_RUN_ID` (KFP passes the id its first task made), else the
record `outputs/mlflow_parent.json`. Under `dvc repro` every stage is its own process, so that record is how
stages share a parent, and it is keyed by the *invocation*: `XKD_PIPELINE_RUN` when set (a fresh value per
`make run` / wrapper call), else the `dvc` process the stage runs under (DVC sets `DVC_STAGE`; its pid and
start time name one `dvc repro` / `dvc exp run`). A record of another invocation, of a run that has ended, or
of a run the store does not hold is replaced by a new parent run -- a stale record never nests a new pipeline
run under an old one, nor stops it. An abandoned parent still RUNNING (its invocation was killed) is marked
KILLED when the next invocation replaces it. A step run by hand (no invocation) joins only a hand-run parent:
while the record's RUNNING parent belongs to an invocation that may still be going (a `dvc` process alive with
the recorded start time, or an `env:` one, whose end nobody can see), the step gets a parent of its own that is
not recorded, and the shared record and its run are left as they are. The git state (`lineage.git_dirty`) is
taken when the parent opens, before the steps write anything, and every step of the run reports that one.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric, RunStatus

from xkd.errors import UsageError
from xkd.log import logger
from xkd.tracking import lineage
from xkd.tracking import runs as tracking

log = logger(__name__)

RUN_ENV = "XKD_PIPELINE_RUN"
INVOCATION_TAG = "xkd.pipeline_invocation"
ROLE_TAG = "xkd.role"
_GIT_TAGS = {"commit": f"{lineage.TAG_PREFIX}.git_commit", "dirty": f"{lineage.TAG_PREFIX}.git_dirty"}
_RUNNING = RunStatus.to_string(RunStatus.RUNNING)


def _proc_start(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (/proc/PID/stat field 22): with the pid, unique."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after "(comm)": state is field 3, starttime 22


def _parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _is_dvc(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # `dvc repro`, `.venv/bin/dvc exp run` (a python script: python .../dvc exp run) or `python -m dvc repro`
    return any(Path(a.decode(errors="replace")).name == "dvc" for a in argv[:3]) or b"dvc" in argv[1:3]


def invocation() -> str | None:
    """What names this pipeline run across its stage processes: `XKD_PIPELINE_RUN`, else the `dvc` process
    this stage runs under (pid + start time), else None (a step run by hand)."""
    if os.environ.get(RUN_ENV):
        return f"env:{os.environ[RUN_ENV]}"
    if not os.environ.get("DVC_STAGE"):
        return None
    pid = os.getppid()
    for _ in range(6):  # dvc -> $SHELL -c -> python: a couple of levels up at most
        if pid is None or pid <= 1:
            break
        if _is_dvc(pid):
            start = _proc_start(pid)
            return f"dvc:{pid}:{start}" if start else None
        pid = _parent_pid(pid)
    return None


def _checked(run_id: str, where: str) -> str:
    try:
        tracking._client().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UsageError(
            f"parent MLflow run {run_id} (from {where}) does not exist in {tracking.redact(tracking._connected['uri'])}"
            "; fix it, or leave it out to start a new pipeline run"
        ) from None
    return run_id


def _adopt(run_id: str) -> str:
    """Use `run_id` as this process's parent: its git state becomes the steps' `lineage.git_*`."""
    tags = tracking._client().get_run(run_id).data.tags
    if _GIT_TAGS["commit"] in tags:
        dirty = tags.get(_GIT_TAGS["dirty"])
        lineage.PIPELINE_GIT.clear()
        lineage.PIPELINE_GIT.update(commit=tags[_GIT_TAGS["commit"]], dirty={"True": True, "False": False}.get(dirty))
    return run_id


def _may_be_running(key: str | None) -> bool:
    """Whether invocation `key` may still be going: `dvc:<pid>:<start>` while a process with that pid and start
    time exists (a reused pid has another start time); `env:...` always (its end is not visible from here)."""
    if key is None:
        return False
    kind, _, rest = key.partition(":")
    if kind != "dvc":
        return True
    pid, _, start = rest.partition(":")
    return pid.isdigit() and _proc_start(int(pid)) == start


def _reusable(path: Path, key: str | None) -> tuple[str | None, bool]:
    """(the record's parent run when this invocation may nest under it, else None; whether this invocation may
    replace the record). A RUNNING parent of another invocation is marked KILLED before it is replaced, except
    by a step run by hand while that invocation may still be going: neither joined nor touched then."""
    try:
        record = json.loads(path.read_text())
        run_id = record["run_id"]
        run = tracking._client().get_run(run_id)
    except FileNotFoundError:
        return None, True
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, mlflow.exceptions.MlflowException):
        log.info(f"{path} names no parent run in this tracking store: a new pipeline run starts")
        return None, True
    if run.info.status != _RUNNING:
        return None, True  # that pipeline run is over (FINISHED, FAILED, KILLED)
    owner = record.get("invocation")
    if owner == key:
        return run_id, True  # a later stage of the same invocation (or hand-run steps among themselves)
    if key is None and _may_be_running(owner):
        log.info(
            f"parent MLflow run {run_id} belongs to the pipeline run in progress {owner}: this step, run by hand,"
            " gets a parent run of its own"
        )
        return None, False
    log.info(f"parent MLflow run {run_id} belongs to an earlier invocation that did not finish: marked KILLED")
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        tracking._client().set_terminated(run_id, status=RunStatus.to_string(RunStatus.KILLED))
    return None, True


def _create(key: str | None) -> str:
    git = lineage.git_commit()  # before any step of this run wrote a file (dvc.lock etc. are left out anyway)
    tags = {ROLE_TAG: "pipeline", INVOCATION_TAG: key, _GIT_TAGS["commit"]: git["commit"]}
    tags[_GIT_TAGS["dirty"]] = git["dirty"]
    run = tracking._client().create_run(
        tracking.experiment_id(),
        run_name=f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}",
        tags=tracking._base_tags(tags),
    )
    return run.info.run_id


def parent_run_id(create: bool = True, outputs_dir: str | Path = "outputs", cli_value: str | None = None) -> str | None:
    """The pipeline's parent run (module docstring); with create=False, None when there is none to join."""
    if cli_value:
        return _adopt(_checked(cli_value, "--mlflow-parent"))
    if os.environ.get(tracking.PARENT_ENV):
        return _adopt(_checked(os.environ[tracking.PARENT_ENV], tracking.PARENT_ENV))
    path, key = Path(outputs_dir) / tracking.PARENT_FILE, invocation()
    found, may_replace = _reusable(path, key)
    if found is not None:
        return _adopt(found)
    if not create:
        return None
    run_id = _create(key)
    if not may_replace:  # the record stays the running pipeline run's; this parent is this process's alone
        return _adopt(run_id)
    # the file is shared with other steps and may be committed or archived: never the URI's credentials
    record = {
        "run_id": run_id,
        "invocation": key,
        "tracking_uri": tracking.redact(tracking._connected["uri"]),
        "experiment_id": tracking.experiment_id(),
    }
    path.unlink(missing_ok=True)  # a stale record (checked above): replaced, never reused
    if tracking._write_exclusive(path, json.dumps(record, indent=2) + "\n"):
        return _adopt(run_id)
    tracking._client().delete_run(run_id)  # another first step got there at the same moment: join its run
    return parent_run_id(create=False, outputs_dir=outputs_dir)


def pipeline_parent(mlflow_parent: str | None = None) -> str:
    """Every step's preamble: connect to the store (one clear error if unusable), then the parent run."""
    tracking.connect()
    return parent_run_id(create=True, cli_value=mlflow_parent)


@contextlib.contextmanager
def pipeline_step_run(step: str, mlflow_parent: str | None = None, **kwargs):
    """`runs.step_run` nested under `pipeline_parent(mlflow_parent)`; yields the ActiveRun. A step that fails
    marks the parent FAILED too (step_run does)."""
    with tracking.step_run(step, pipeline_parent(mlflow_parent), **kwargs) as run:
        yield run


def finish_parent(parent_id: str, status: str = "FINISHED") -> None:
    """End the parent run."""
    tracking._client().set_terminated(parent_id, status=status)


@contextlib.contextmanager
def closing(parent_id: str):
    """Around the fan-in step's work: an exception marks the pipeline run FAILED (KILLED on Ctrl-C) and goes on."""
    try:
        yield
    except BaseException as e:
        status = RunStatus.KILLED if isinstance(e, KeyboardInterrupt) else RunStatus.FAILED
        with contextlib.suppress(Exception):  # never mask the step's own error
            finish_parent(parent_id, RunStatus.to_string(status))
        raise


def pipeline_params(pretrain_dir: str | Path | None = None) -> dict:
    """The pipeline run's params: the pretraining config as it ran (`<pretrain>/config.yaml`, the same names as
    the pretrain run's params) and, under DVC, params.yaml as `dvc.*`."""
    import yaml

    params = {}
    config = Path(pretrain_dir) / "config.yaml" if pretrain_dir else None
    if config is not None and config.is_file():
        params.update(yaml.safe_load(config.read_text()) or {})
    if os.environ.get("DVC_STAGE") and Path("params.yaml").is_file():
        params["dvc"] = yaml.safe_load(Path("params.yaml").read_text()) or {}
    return params


def evaluation_key(metrics: dict) -> str:
    """`<dataset>-<protocol>[-<features>]`: an evaluation's name on the parent run and the model version."""
    features = metrics.get("features", "encoder")
    return f"{metrics['dataset']}-{metrics['protocol']}" + ("" if features == "encoder" else f"-{features}")


def headline(metrics: list[dict]) -> dict[str, float]:
    """The parent's metrics: per evaluation `<key>/<metric>` = the mean over folds, `<key>/<metric>_std` beside."""
    out = {}
    for m in metrics:
        out[f"{evaluation_key(m)}/{m['metric']}"] = float(m["mean"])
        out[f"{evaluation_key(m)}/{m['metric']}_std"] = float(m["std"])
    return out


def finish_pipeline(parent_id: str, metrics: list[dict], params: dict | None = None) -> None:
    """Close the pipeline run: its params (flattened), the headline metric of every evaluation, FINISHED."""
    client = tracking._client()
    if params:
        tracking.log_params_flat(params, run_id=parent_id)
    now = int(time.time() * 1000)
    values = [Metric(k, v, now, 0) for k, v in headline(metrics).items()]
    for i in range(0, len(values), 1000):
        client.log_batch(parent_id, metrics=values[i : i + 1000], synchronous=True)
    finish_parent(parent_id)
