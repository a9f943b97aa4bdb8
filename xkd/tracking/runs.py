"""The project's MLflow conventions (docs/DESIGN.md: Tracking, Contracts "MLflow runs"), used by every step.

    uri = connect()                                   # one clear UsageError if the store is unreachable
    parent = parent_run_id(args.mlflow_parent)        # CLI > MLFLOW_PARENT_RUN_ID > outputs/mlflow_parent.json > new
    with step_run("pretrain", parent, run_id=ckpt_run_id) as run:
        log_params_flat(cfg)
        with MetricLogger(run.info.run_id) as metrics:
            metrics.log(step, loss=..., lr=...)       # NonFiniteLoss on NaN/inf, naming the term

Everything goes through the tracking URI set by `connect()`; a step that forgets to call it gets the
project's default, never MLflow's own (a `./mlruns` or `./mlflow.db` in whatever directory it runs from).

Stores: sqlite:///, file:// (or a plain directory), http(s):// and, when their driver is installed,
postgresql:// / mysql:// URIs; anything else is refused in one line by `check_store`, which every step
calls before its work. Credentials in a URI (`user:password@`, `password=`) never appear in a message or a
file: everything shown goes through `redact`. A dead server costs seconds, not MLflow's minutes of retries
(`HTTP_DEFAULTS`), and a training run's `MetricLogger(pending=...)` never waits longer than
`FLUSH_TIMEOUT_S` for it: unsent metrics wait in a file and are replayed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
)

from xkd.errors import UsageError
from xkd.log import logger
from xkd.paths import REPO
from xkd.tracking import lineage

log = logger(__name__)

EXPERIMENT = "xkd"
# MLflow 3's experiment type: model development, so the UI opens the runs/models view, not the GenAI one
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
PARENT_ENV = "MLFLOW_PARENT_RUN_ID"
PARENT_FILE = "mlflow_parent.json"
PARENT_TAG = "mlflow.parentRunId"
# A dead server must fail the step at start in seconds; MLflow's own retries would take minutes.
CONNECT_TIMEOUT_S = float(os.environ.get("XKD_MLFLOW_CONNECT_TIMEOUT", "5"))
# The longest a training loop waits for one metrics flush; past it the metrics stay pending and training goes on.
FLUSH_TIMEOUT_S = float(os.environ.get("XKD_MLFLOW_FLUSH_TIMEOUT", "10"))
# MLflow's own HTTP defaults (7 retries with backoff factor 2, 120 s per request) keep a call to a dead server
# going for minutes; these bound it to seconds. Set the variables yourself to override them.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
SQL_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient", "pymysql": "PyMySQL", "psycopg": "psycopg"}

_connected: dict[str, str] = {}  # {"uri": ..., "experiment_id": ...} of the last successful connect()


class NonFiniteLoss(ValueError):
    """A metric was NaN/inf; the message names the metric and the step."""


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else the project's sqlite store `<repo root>/mlflow.db`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlflow.db'}"


def redact(text) -> str:
    """`text` with any credentials of a URI in it masked: `scheme://user:pw@host` -> `scheme://***@host`,
    `password=pw` -> `password=***`."""
    text = re.sub(r"://[^/\s@'\"]+@", "://***@", str(text))
    return re.sub(r"(?i)(passw(or)?d=)[^&\s'\"]+", r"\1***", text)


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri[len("sqlite:///") :].split("?", 1)[0]))


def _scheme(uri: str) -> str:
    return urlparse(uri).scheme.lower()  # "" for a plain path


def _check_http(uri: str) -> None:
    parts = urlparse(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]  # credentials travel in a header, never in the health URL
    health = parts._replace(netloc=netloc).geturl().rstrip("/") + "/health"
    request = urllib.request.Request(health)
    if parts.username is not None:
        import base64

        token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        pass  # the server answered (maybe 401/404 behind a proxy): it is reachable; MLflow reports the rest
    except (urllib.error.URLError, socket.timeout, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UsageError(
            f"MLflow tracking server {redact(uri)} is unreachable ({redact(reason)}); start it or set "
            f"MLFLOW_TRACKING_URI to a reachable store"
        ) from None


def _check_sqlite(uri: str, path: Path) -> None:
    try:  # opening creates the file, which is what MLflow would do next anyway
        with contextlib.closing(sqlite3.connect(path, timeout=CONNECT_TIMEOUT_S)) as db:
            db.execute("select 1").fetchall()
    except sqlite3.Error as e:
        raise UsageError(
            f"MLflow tracking store {redact(uri)} cannot be opened ({e}); check the path or set MLFLOW_TRACKING_URI"
        ) from None


def _check_file_store(uri: str) -> None:
    root = Path(unquote(urlparse(uri).path))
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as e:
        raise UsageError(
            f"MLflow file store {redact(uri)} is not a writable directory ({e.strerror or e}); check the path "
            "or set MLFLOW_TRACKING_URI"
        ) from None
    # MLflow 3 refuses its file store unless asked; a file:// URI set by the user is that request
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def _check_sql(uri: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(uri)
        url.get_dialect().import_dbapi()  # what MLflow's SQLAlchemy store imports first
    except ModuleNotFoundError as e:
        package = DRIVER_PACKAGES.get(e.name, e.name)
        raise UsageError(
            f"MLflow tracking store {redact(uri)} needs the database driver {e.name}, which is not installed "
            f"(pip install {package}); or use a sqlite:///, file:// or http(s):// store"
        ) from None
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        raise UsageError(f"MLflow tracking store URI {redact(uri)} is not a valid database URL ({redact(e)})") from None
    host, port = url.host or "localhost", url.port or SQL_PORTS.get(url.get_backend_name(), 0)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise UsageError(
            f"MLflow tracking database {redact(uri)} is unreachable ({e.strerror or e}); start it or set "
            "MLFLOW_TRACKING_URI to a reachable store"
        ) from None


def check_store(uri: str | None = None) -> str:
    """Preflight of the tracking store `uri` (default `tracking_uri()`), cheap enough to run before any work:
    a server that answers, a sqlite file that opens, a writable file-store directory, an installed SQL driver
    and a database port that accepts. Anything else is one clear UsageError (credentials masked). Returns the
    URI, a plain directory turned into its absolute file:// form."""
    uri = uri or tracking_uri()
    scheme = _scheme(uri)
    if not scheme:  # a plain path: MLflow's file store, anchored here so every step means the same directory
        uri, scheme = Path(uri).expanduser().resolve().as_uri(), "file"
    if scheme in ("http", "https"):
        _check_http(uri)
    elif scheme == "sqlite" and (path := _sqlite_path(uri)) is not None:
        _check_sqlite(uri, path)
    elif scheme == "file":
        _check_file_store(uri)
    elif scheme.split("+", 1)[0] in SQL_PORTS:
        _check_sql(uri)
    else:
        raise UsageError(
            f"MLflow tracking URI {redact(uri)} is not supported here; use sqlite:///PATH, file:///DIR, "
            "http(s)://HOST:PORT, postgresql:// or mysql://"
        )
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    return uri


def _credentials_to_env(uri: str) -> str:
    """An http(s) URI's `user:password@` moved into MLFLOW_TRACKING_USERNAME / _PASSWORD (MLflow sends them
    as basic auth from there), so that MLflow never holds them in the URI it prints ("View run at ...")
    and puts in its error messages. Returns the URI without them."""
    parts = urlparse(uri)
    if parts.scheme not in ("http", "https") or parts.username is None:
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username)
    os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password or "")
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def connect(uri: str | None = None) -> str:
    """Point MLflow at `uri` (default `tracking_uri()`), fail fast if unreachable, ensure experiment `xkd`
    and make it current. Returns the URI (an http(s) one without its credentials, which MLflow then takes
    from the environment)."""
    uri = _credentials_to_env(check_store(uri))
    client = MlflowClient(uri)
    try:
        exp = client.get_experiment_by_name(EXPERIMENT)
        if exp is None:
            # On sqlite MLflow would put artifacts under ./mlruns of the current directory; keep them beside
            # the database instead (the project's /mlruns/ is git-ignored), wherever a step runs from.
            db = _sqlite_path(uri)
            location = (db.resolve().parent / "mlruns" / EXPERIMENT).as_uri() if db else None
            try:
                exp_id = client.create_experiment(EXPERIMENT, artifact_location=location, tags=EXPERIMENT_TAGS)
            except mlflow.exceptions.MlflowException:  # created concurrently by a parallel step
                exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
        else:
            exp_id = exp.experiment_id
            for key, value in EXPERIMENT_TAGS.items():  # an experiment made before the tag existed
                if exp.tags.get(key) != value:
                    client.set_experiment_tag(exp_id, key, value)
        mlflow.set_tracking_uri(uri)  # only once the store works: a failed connect leaves MLflow as it was
        mlflow.set_experiment(experiment_id=exp_id)
    except Exception as e:  # any store error here means nothing would be logged: say so in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"MLflow tracking store {redact(uri)} is not usable ({redact(first)})") from None
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


# The pipeline's parent run lives in xkd.tracking.pipeline_run (one per pipeline run, keyed by the invocation);
# these names stay here because every step and the KFP task shims call them through this module.


def parent_run_id(create: bool = True, outputs_dir: str | Path = "outputs", cli_value: str | None = None) -> str | None:
    """The pipeline's parent run (xkd.tracking.pipeline_run.parent_run_id)."""
    from xkd.tracking import pipeline_run

    return pipeline_run.parent_run_id(create, outputs_dir, cli_value)


def finish_parent(parent_id: str, status: str = "FINISHED") -> None:
    """End the parent run (the fan-in step calls this once the pipeline is done)."""
    _client().set_terminated(parent_id, status=status)


def pipeline_parent(mlflow_parent: str | None = None) -> str:
    """Every step's preamble: connect to the store (one clear error if unusable), then the pipeline's parent
    run (xkd.tracking.pipeline_run: the CLI value, the environment, this invocation's record, or a new one)."""
    from xkd.tracking import pipeline_run

    return pipeline_run.pipeline_parent(mlflow_parent)


@contextlib.contextmanager
def pipeline_step_run(step: str, mlflow_parent: str | None = None, **kwargs):
    """`step_run` nested under `pipeline_parent(mlflow_parent)`; yields the ActiveRun."""
    with step_run(step, pipeline_parent(mlflow_parent), **kwargs) as run:
        yield run


def moved_from(run_id: str, parent_id: str | None) -> str | None:
    """The pipeline run that `run_id` is nested under when resuming it under `parent_id` moves it there
    (`step_run` does), else None. One clear error when the store does not hold the run."""
    try:
        previous = _client().get_run(run_id).data.tags.get(PARENT_TAG)
    except mlflow.exceptions.MlflowException:
        raise UsageError(
            f"MLflow run {run_id} to resume does not exist in {redact(_connected['uri'])}; use the "
            f"tracking store the run started with, or start a fresh output directory"
        ) from None
    return previous if parent_id and previous and previous != parent_id else None


@contextlib.contextmanager
def step_run(
    step: str,
    parent_id: str | None,
    run_id: str | None = None,
    tags: dict | None = None,
    log_system_metrics: bool | None = None,
):
    """Start (or resume `run_id`) a run for `step` nested under `parent_id`; ends FINISHED, or FAILED (KILLED
    on Ctrl-C) when an exception escapes, which is re-raised, and then marks `parent_id` the same way: the
    pipeline run failed with its step. A resumed run moves under `parent_id` (the pipeline run finishing it).
    Yields the ActiveRun."""
    client = _client()
    previous = moved_from(run_id, parent_id) if run_id else None
    if previous:
        client.set_tag(run_id, PARENT_TAG, parent_id)
        client.set_tag(run_id, "xkd.resumed_from_parent", previous)
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
        try:
            mlflow.end_run(status=status)
            if status != RunStatus.to_string(RunStatus.FINISHED) and parent_id:
                client.set_terminated(parent_id, status=status)
        except Exception as e:  # a store gone since the start: one line, never masking the step's own error
            if status != RunStatus.to_string(RunStatus.FINISHED):
                log.warning(f"could not mark MLflow run {run.info.run_id} {status} ({_one_line(e)})")
            else:
                raise UsageError(
                    f"the step's work is done but its MLflow run {run.info.run_id} could not be closed in "
                    f"{redact(_connected.get('uri', ''))} ({_one_line(e)}); rerun the step once the store is back"
                ) from None


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


def _one_line(e: BaseException) -> str:
    """An exception as one short, credential-free line (MLflow's own messages run to many lines)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    # MLflow wraps urllib3 wraps the socket error: the socket error is the part a user can act on
    cause = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return cause.group(1).strip() if cause else redact(text)[:200]


class _FromThread(logging.Filter):
    """Drops log records of one thread: urllib3 logs every retry of a flush that is allowed to fail."""

    def __init__(self, name: str):
        super().__init__()
        self.thread_name = name

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != self.thread_name


class MetricLogger:
    """Buffers per-step metrics and writes them with `log_batch` every `flush_every` steps (and on exit).

    Without `pending`, writes are synchronous, so a store failure raises where the step runs.
    With `pending` (a file path; training), the store can never stop or hang the caller: each flush runs in a
    worker thread the caller waits on for at most `flush_timeout` seconds; on failure a one-line warning
    (once per outage), the metrics stay in the buffer and are sent by a later flush. `persist()` writes the
    unsent metrics (timestamps included, so a replay of already-stored values is a no-op in MLflow) to
    `pending`; a new logger on the same file replays those at steps <= `resume_step`, the later ones being
    logged again by the resumed training."""

    def __init__(
        self,
        run_id: str,
        flush_every: int = 50,
        check_finite: bool = True,
        pending: str | Path | None = None,
        resume_step: int | None = None,
        flush_timeout: float | None = None,
    ):
        self.run_id, self.flush_every, self.check_finite = run_id, max(1, flush_every), check_finite
        self._buffer: list[Metric] = []
        self._steps = 0
        self.pending = Path(pending) if pending is not None else None
        self.flush_timeout = FLUSH_TIMEOUT_S if flush_timeout is None else flush_timeout
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._failure: str | None = None  # the reason of the current outage, None while the store works
        if self.pending is not None and self.pending.exists():
            for line in self.pending.read_text().splitlines():
                row = json.loads(line)
                if resume_step is None or row["step"] <= resume_step:
                    self._buffer.append(Metric(row["key"], row["value"], row["timestamp"], row["step"]))

    @property
    def unsent(self) -> int:
        """How many metric values are not in the store yet."""
        with self._lock:
            return len(self._buffer)

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
        with self._lock:
            self._buffer += [Metric(k, v, ts, int(step)) for k, v in values.items()]
            full = len(self._buffer) >= MAX_METRICS_PER_BATCH
        self._steps += 1
        if self._steps >= self.flush_every or full:
            self.flush()

    def _send(self) -> None:
        """Write the buffer's current contents, oldest first; drop only what was written."""
        client = _client()
        with self._lock:
            todo = len(self._buffer)
        while todo:
            with self._lock:  # log() only appends, so the front of the buffer is what this loop owns
                chunk = self._buffer[: min(todo, MAX_METRICS_PER_BATCH)]
            client.log_batch(self.run_id, metrics=chunk, synchronous=True)
            with self._lock:
                del self._buffer[: len(chunk)]
            todo -= len(chunk)

    def flush(self) -> bool:
        """Send the buffer. Synchronous mode: raises on a store error. With `pending`: True when everything
        was sent within `flush_timeout`, else False (training goes on; the buffer is persisted)."""
        self._steps = 0
        if self.pending is None:
            self._send()
            return True
        if self._worker is not None and self._worker.is_alive():
            return False  # the previous flush is still waiting on the store: keep buffering
        errors: list[BaseException] = []

        def work() -> None:
            try:
                self._send()
            except Exception as e:  # reported by the caller's thread, in one line
                errors.append(e)

        self._worker = threading.Thread(target=work, name=f"xkd-metrics-{id(self)}", daemon=True)
        quiet = _FromThread(self._worker.name)
        retries = logging.getLogger("urllib3.connectionpool")
        retries.addFilter(quiet)
        try:
            self._worker.start()
            self._worker.join(self.flush_timeout)
        finally:
            retries.removeFilter(quiet)
        ok = not self._worker.is_alive() and not errors
        if ok and self._failure is not None:
            log.info("MLflow tracking store reachable again: the pending metrics were sent")
            self._failure = None
        elif not ok and self._failure is None:
            self._failure = _one_line(errors[0]) if errors else f"no answer within {self.flush_timeout:g} s"
            log.warning(  # xkd.log: on a line of its own, not glued to a training progress bar
                f"MLflow tracking store {redact(_connected.get('uri', ''))} failed ({self._failure}); "
                f"training goes on, unsent metrics wait in {self.pending} and are sent when it is back"
            )
        self.persist()
        return ok

    def persist(self) -> None:
        """Write the unsent metrics to `pending` atomically (remove it when none are left)."""
        if self.pending is None:
            return
        with self._lock:
            rows = [{"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step} for m in self._buffer]
        if not rows:
            self.pending.unlink(missing_ok=True)
            return
        self.pending.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.pending.with_name(self.pending.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(self.pending)

    def close(self) -> None:
        """Final flush; with `pending`, a UsageError when metrics are still unsent (they stay in the file)."""
        if self.flush() or self.pending is None:
            return
        raise UsageError(
            f"{self.unsent} metric values could not be sent to MLflow tracking store "
            f"{redact(_connected.get('uri', ''))} ({self._failure}); they are kept in {self.pending}: rerun the "
            "same command once the store is back to send them (the work itself is saved)"
        )

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self.pending is not None:
            self.persist()
        else:
            with contextlib.suppress(Exception):  # what was logged before the error still lands if it can
                self._send()


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
        try:
            _client().log_artifact(run_id, str(dst), folder or None)
        except (mlflow.exceptions.MlflowException, OSError, requests.RequestException) as e:
            raise UsageError(
                f"could not log {name} to MLflow tracking store {redact(_connected.get('uri', ''))} "
                f"({_one_line(e)}); rerun the step once the store is back"
            ) from None
    return f"{folder}/{name}" if folder else name
