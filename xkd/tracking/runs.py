"""The project's MLflow conventions (docs/DESIGN.md: Tracking, Contracts "MLflow runs"), used by every step.

    uri = connect()                                   # one clear UsageError if the store is unreachable
    parent = parent_run_id(args.mlflow_parent)        # CLI > MLFLOW_PARENT_RUN_ID > outputs/mlflow_parent.json > new
    with step_run("pretrain", parent, run_id=ckpt_run_id) as run:
        log_params_flat(cfg)
        with MetricLogger(run.info.run_id) as metrics:
            metrics.log(step, loss=..., lr=...)       # NonFiniteLoss on NaN/inf, naming the term

Everything goes through the tracking URI set by `connect()`; a step that forgets to call it gets the
project's default, never MLflow's own (a `./mlruns` or `./mlflow.db` in whatever directory it runs from).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from xkd.errors import UsageError
from xkd.paths import REPO
from xkd.tracking import lineage

EXPERIMENT = "xkd"
PARENT_ENV = "MLFLOW_PARENT_RUN_ID"
PARENT_FILE = "mlflow_parent.json"
# A dead server must fail the step at start in seconds; MLflow's own retries would take minutes.
CONNECT_TIMEOUT_S = float(os.environ.get("XKD_MLFLOW_CONNECT_TIMEOUT", "5"))

_connected: dict[str, str] = {}  # {"uri": ..., "experiment_id": ...} of the last successful connect()


class NonFiniteLoss(ValueError):
    """A metric was NaN/inf; the message names the metric and the step."""


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else the project's sqlite store `<repo root>/mlflow.db`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///") :].split("?", 1)[0]))


def _check_reachable(uri: str) -> None:
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=CONNECT_TIMEOUT_S):
                pass
        except urllib.error.HTTPError:
            pass  # the server answered (maybe 401/404 behind a proxy): it is reachable; MLflow reports the rest
        except (urllib.error.URLError, socket.timeout, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UsageError(
                f"MLflow tracking server {uri} is unreachable ({reason}); start it or set "
                f"MLFLOW_TRACKING_URI to a reachable store"
            ) from None
    elif (path := _sqlite_path(uri)) is not None:
        try:  # opening creates the file, which is what MLflow would do next anyway
            with contextlib.closing(sqlite3.connect(path, timeout=CONNECT_TIMEOUT_S)) as db:
                db.execute("select 1").fetchall()
        except sqlite3.Error as e:
            raise UsageError(
                f"MLflow tracking store {uri} cannot be opened ({e}); check the path or set MLFLOW_TRACKING_URI"
            ) from None


def connect(uri: str | None = None) -> str:
    """Point MLflow at `uri` (default `tracking_uri()`), fail fast if unreachable, ensure experiment `xkd`
    and make it current. Returns the URI."""
    uri = uri or tracking_uri()
    _check_reachable(uri)
    client = MlflowClient(uri)
    try:
        exp = client.get_experiment_by_name(EXPERIMENT)
        if exp is None:
            # On sqlite MLflow would put artifacts under ./mlruns of the current directory; keep them beside
            # the database instead (the project's /mlruns/ is git-ignored), wherever a step runs from.
            db = _sqlite_path(uri)
            location = (db.resolve().parent / "mlruns" / EXPERIMENT).as_uri() if db else None
            try:
                exp_id = client.create_experiment(EXPERIMENT, artifact_location=location)
            except mlflow.exceptions.MlflowException:  # created concurrently by a parallel step
                exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
        else:
            exp_id = exp.experiment_id
        mlflow.set_tracking_uri(uri)  # only once the store works: a failed connect leaves MLflow as it was
        mlflow.set_experiment(experiment_id=exp_id)
    except Exception as e:  # any store error here means nothing would be logged: say so in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"MLflow tracking store {uri} is not usable ({first})") from None
    _connected.update(uri=uri, experiment_id=exp_id)
    return uri


def _client() -> MlflowClient:
    if not _connected:
        connect()
    return MlflowClient(_connected["uri"])


def experiment_id() -> str:
    """Id of experiment `xkd` in the connected store (connecting with the defaults if needed)."""
    _client()
    return _connected["experiment_id"]


def _base_tags(extra: dict | None) -> dict[str, str]:
    # Only provenance we choose explicitly: never environment variables, which may hold credentials.
    tags = {"mlflow.source.git.commit": lineage.git_commit()["commit"]}
    tags.update(extra or {})
    return {k: str(v)[:8000] for k, v in tags.items() if v is not None}


def _write_exclusive(path: Path, text: str) -> bool:
    """Write `path` atomically unless it exists; False when another process got there first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.link(tmp, path)  # unlike rename, link refuses to replace: two first steps cannot both win
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _checked(run_id: str, where: str) -> str:
    try:
        _client().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UsageError(
            f"parent MLflow run {run_id} (from {where}) does not exist in {_connected['uri']}; "
            f"fix it, or remove it to start a new pipeline run"
        ) from None
    return run_id


def parent_run_id(create: bool = True, outputs_dir: str | Path = "outputs", cli_value: str | None = None) -> str | None:
    """The pipeline's parent run: `--mlflow-parent` value, else `MLFLOW_PARENT_RUN_ID`, else
    `<outputs_dir>/mlflow_parent.json`, else (create=True) a new parent run recorded in that file."""
    if cli_value:
        return _checked(cli_value, "--mlflow-parent")
    if os.environ.get(PARENT_ENV):
        return _checked(os.environ[PARENT_ENV], PARENT_ENV)
    path = Path(outputs_dir) / PARENT_FILE
    if path.exists():
        try:
            return _checked(json.loads(path.read_text())["run_id"], str(path))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UsageError(f"{path} is not a parent-run record; remove it to start a new pipeline run") from None
    if not create:
        return None
    client = _client()
    run = client.create_run(
        experiment_id(),
        run_name=f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}",
        tags=_base_tags({"xkd.role": "pipeline"}),
    )
    record = {"run_id": run.info.run_id, "tracking_uri": _connected["uri"], "experiment_id": experiment_id()}
    if _write_exclusive(path, json.dumps(record, indent=2) + "\n"):
        return run.info.run_id
    client.delete_run(run.info.run_id)  # lost the race: nest under the winner's run instead
    return parent_run_id(create=False, outputs_dir=outputs_dir)


def finish_parent(parent_id: str, status: str = "FINISHED") -> None:
    """End the parent run (the fan-in step calls this once the pipeline is done)."""
    _client().set_terminated(parent_id, status=status)


def pipeline_parent(mlflow_parent: str | None = None) -> str:
    """Every step's preamble: connect to the store (one clear error if unusable), then the pipeline's parent
    run (`parent_run_id`: the CLI value, the environment, outputs/mlflow_parent.json, or a new one)."""
    connect()
    return parent_run_id(create=True, cli_value=mlflow_parent)


@contextlib.contextmanager
def pipeline_step_run(step: str, mlflow_parent: str | None = None, **kwargs):
    """`step_run` nested under `pipeline_parent(mlflow_parent)`; yields the ActiveRun."""
    with step_run(step, pipeline_parent(mlflow_parent), **kwargs) as run:
        yield run


@contextlib.contextmanager
def step_run(
    step: str,
    parent_id: str | None,
    run_id: str | None = None,
    tags: dict | None = None,
    log_system_metrics: bool | None = None,
):
    """Start (or resume `run_id`, keeping its original parent) a run for `step` nested under `parent_id`;
    ends FINISHED, or FAILED (KILLED on Ctrl-C) when an exception escapes, which is re-raised.
    Yields the ActiveRun."""
    client = _client()
    if run_id:
        try:
            client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            raise UsageError(
                f"MLflow run {run_id} to resume does not exist in {_connected['uri']}; use the "
                f"tracking store the run started with, or start a fresh output directory"
            ) from None
    run = mlflow.start_run(
        run_id=run_id,
        experiment_id=None if run_id else experiment_id(),
        run_name=step,
        nested=True,
        parent_run_id=None if run_id else parent_id,
        tags=_base_tags({"xkd.step": step, **(tags or {})}),
        log_system_metrics=log_system_metrics,
    )
    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        yield run
        status = RunStatus.to_string(RunStatus.FINISHED)
    except KeyboardInterrupt:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    except SystemExit as e:
        if e.code in (0, None):
            status = RunStatus.to_string(RunStatus.FINISHED)
        raise
    finally:
        mlflow.end_run(status=status)


def flatten(cfg: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists/tuples stay leaves (logged as JSON)."""
    out = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _param_value(v) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str) if isinstance(v, (list, tuple, dict)) else str(v)
    return s if len(s) <= MAX_PARAM_VAL_LENGTH else s[: MAX_PARAM_VAL_LENGTH - 3] + "..."


def log_params_flat(cfg: dict, run_id: str | None = None) -> dict[str, str]:
    """Log a nested config as dotted params (values truncated to MLflow's limit) in batches; returns them.
    Re-logging the same config on resume is fine; a changed value is MLflow's error."""
    run_id = run_id or mlflow.active_run().info.run_id
    # MLflow keys allow only [\w\-. /:]; anything else (e.g. '[' in an override) becomes '_'.
    params = {re.sub(r"[^\w\-. /:]", "_", k)[:MAX_ENTITY_KEY_LENGTH]: _param_value(v) for k, v in flatten(cfg).items()}
    items = [Param(k, v) for k, v in params.items()]
    client = _client()
    for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=items[i : i + MAX_PARAMS_TAGS_PER_BATCH], synchronous=True)
    return params


class MetricLogger:
    """Buffers per-step metrics and writes them with `log_batch` every `flush_every` steps (and on exit).
    Writes are synchronous, so a store failure raises in the training loop instead of losing metrics."""

    def __init__(self, run_id: str, flush_every: int = 50, check_finite: bool = True):
        self.run_id, self.flush_every, self.check_finite = run_id, max(1, flush_every), check_finite
        self._buffer: list[Metric] = []
        self._steps = 0

    def log(self, step: int, **metrics) -> None:
        values = {k: float(v) for k, v in metrics.items()}  # float() also takes 0-d tensors and numpy scalars
        if self.check_finite:
            bad = [k for k, v in values.items() if not math.isfinite(v)]
            if bad:
                err = NonFiniteLoss(
                    f"non-finite {bad[0]}={values[bad[0]]} at step {step}"
                    + (f" (also {', '.join(bad[1:])})" if bad[1:] else "")
                )
                try:
                    self.flush()  # the history up to the failure still lands; this step's values do not
                except Exception as flush_error:
                    raise err from flush_error
                raise err
        ts = int(time.time() * 1000)
        self._buffer += [Metric(k, v, ts, int(step)) for k, v in values.items()]
        self._steps += 1
        if self._steps >= self.flush_every or len(self._buffer) >= MAX_METRICS_PER_BATCH:
            self.flush()

    def flush(self) -> None:
        client = _client()
        while self._buffer:
            chunk = self._buffer[:MAX_METRICS_PER_BATCH]
            client.log_batch(self.run_id, metrics=chunk, synchronous=True)
            del self._buffer[: len(chunk)]  # drop only what was written, so a retry after an error resends
        self._steps = 0

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.flush()


def log_png(fig_or_path, artifact_path: str, run_id: str | None = None) -> str:
    """Log a matplotlib figure or an existing PNG as run artifact `artifact_path`: a file path ending in
    .png ("plots/loss.png"), or a folder ("plots") keeping the file's name (a figure's: figure.png).
    Returns the artifact's path in the run."""
    run_id = run_id or mlflow.active_run().info.run_id
    if artifact_path.lower().endswith(".png"):
        folder, name = os.path.split(artifact_path)
    else:
        folder = artifact_path.strip("/")
        name = Path(fig_or_path).name if isinstance(fig_or_path, (str, Path)) else "figure.png"
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / name
        if isinstance(fig_or_path, (str, Path)):
            shutil.copyfile(fig_or_path, dst)
        else:
            fig_or_path.savefig(dst, format="png", dpi=120, bbox_inches="tight")
        _client().log_artifact(run_id, str(dst), folder or None)
    return f"{folder}/{name}" if folder else name
