"""xkd.tracking.runs on a temporary sqlite store (never the project's mlflow.db)."""

from __future__ import annotations

import json
import math
import socket
import time

import matplotlib
import mlflow
import pytest

from xkd.errors import UsageError
from xkd.tracking import lineage
from xkd.tracking import runs as tracking


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module: creating MLflow's schema costs seconds, a run costs milliseconds."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv(tracking.PARENT_ENV, raising=False)
        assert tracking.connect() == uri
        yield mlflow.MlflowClient(uri)


@pytest.fixture
def parent(store, tmp_path):
    return tracking.parent_run_id(outputs_dir=tmp_path / "outputs")


def test_uri_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{tracking.REPO / 'mlflow.db'}"
    assert tracking.tracking_uri().startswith("sqlite:////")  # absolute: the same store from any directory
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/x.db")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path}/x.db"


def test_unreachable_server_is_one_clear_error_at_start(monkeypatch):
    with socket.socket() as s:  # a port nothing listens on: bound, then released
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setattr(tracking, "CONNECT_TIMEOUT_S", 2.0)
    before = dict(tracking._connected)
    t0 = time.monotonic()
    with pytest.raises(UsageError, match=f"{uri} is unreachable") as err:
        tracking.connect(uri)
    assert time.monotonic() - t0 < 5
    assert "\n" not in str(err.value)
    assert tracking._connected == before  # a failed connect leaves the previous store in place


def test_unopenable_sqlite_is_a_usage_error(tmp_path):
    uri = f"sqlite:///{tmp_path}/no/such/dir/mlflow.db"
    with pytest.raises(UsageError, match="cannot be opened"):
        tracking.connect(uri)


def test_experiment_and_artifacts_beside_the_db(store):
    exp = store.get_experiment_by_name("xkd")
    assert exp.experiment_id == tracking.experiment_id()
    db = tracking._sqlite_path(tracking._connected["uri"])
    assert exp.artifact_location == (db.parent / "mlruns" / "xkd").as_uri()


def test_parent_file_created_once_and_reused(store, tmp_path, monkeypatch):
    out = tmp_path / "outputs"
    assert tracking.parent_run_id(create=False, outputs_dir=out) is None
    pid = tracking.parent_run_id(outputs_dir=out)
    record = json.loads((out / "mlflow_parent.json").read_text())
    assert record["run_id"] == pid and record["tracking_uri"] == tracking._connected["uri"]
    assert tracking.parent_run_id(outputs_dir=out) == pid
    assert not list(out.glob("mlflow_parent.json.*"))  # no temp file left behind
    assert store.get_run(pid).data.tags["xkd.role"] == "pipeline"

    other = tracking.parent_run_id(outputs_dir=tmp_path / "elsewhere")
    monkeypatch.setenv(tracking.PARENT_ENV, other)
    assert tracking.parent_run_id(outputs_dir=out) == other  # env beats the file
    assert tracking.parent_run_id(outputs_dir=out, cli_value=pid) == pid  # --mlflow-parent beats env
    with pytest.raises(UsageError, match="0123456789abcdef.*--mlflow-parent"):
        tracking.parent_run_id(outputs_dir=out, cli_value="0123456789abcdef0123456789abcdef")


def test_step_run_nests_tags_and_finishes(store, parent):
    with tracking.step_run("eval", parent, tags={"xkd.spec": "ucf101-svm"}) as run:
        run_id = run.info.run_id
    r = store.get_run(run_id)
    assert r.info.status == "FINISHED"
    assert r.data.tags["mlflow.parentRunId"] == parent
    assert r.data.tags["xkd.step"] == "eval" and r.data.tags["xkd.spec"] == "ucf101-svm"
    assert r.data.tags["mlflow.source.git.commit"] == lineage.git_commit()["commit"]  # the tests run in a checkout
    assert mlflow.active_run() is None


def test_run_commit_tag_and_lineage_agree_without_git(store, parent, monkeypatch):
    """In an image without .git (or git), the commit comes from XKD_GIT_COMMIT for run tags and lineage alike."""
    monkeypatch.setenv("PATH", "/nonexistent")  # no git binary: the image case
    monkeypatch.setenv("XKD_GIT_COMMIT", "0123abc")
    with tracking.step_run("eval", parent) as run:
        run_id = run.info.run_id
    assert store.get_run(run_id).data.tags["mlflow.source.git.commit"] == "0123abc"
    assert lineage.git_commit()["commit"] == "0123abc"


def test_git_commit_outside_a_checkout(tmp_path, monkeypatch):
    """A directory that is not a git work tree (git installed): no commit unless XKD_GIT_COMMIT names one."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # never find a repo above tmp_path
    monkeypatch.delenv("XKD_GIT_COMMIT", raising=False)
    assert lineage.git_commit(tmp_path) == {"commit": None, "dirty": None}
    monkeypatch.setenv("XKD_GIT_COMMIT", "0123abc")
    assert lineage.git_commit(tmp_path) == {"commit": "0123abc", "dirty": None}
    head = lineage.git_commit()  # the project checkout the tests run in: git wins over the variable
    assert len(head["commit"]) == 40 and head["commit"] != "0123abc" and isinstance(head["dirty"], bool)


def test_step_run_failed_on_exception_and_resume_reuses_run(store, parent):
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.step_run("pretrain", parent) as run:
            run_id = run.info.run_id
            raise RuntimeError("boom")
    assert store.get_run(run_id).info.status == "FAILED"
    assert mlflow.active_run() is None

    with tracking.step_run("pretrain", parent, run_id=run_id) as resumed:  # resume from a checkpoint's run id
        assert resumed.info.run_id == run_id
    r = store.get_run(run_id)
    assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parent

    with pytest.raises(UsageError, match="to resume does not exist"):
        with tracking.step_run("pretrain", parent, run_id="f" * 32):
            pass


def test_log_params_flat(store, parent):
    cfg = {
        "model": {"preset": "tiny", "patch": [4, 16, 16], "heads": {"out_dim": 8}},
        "optim": {"lr": 1e-4, "betas": (0.9, 0.95)},
        "note": "x" * 7000,
        "many": {f"k{i}": i for i in range(150)},
    }  # > 100 params: more than one batch
    with tracking.step_run("pretrain", parent) as run:
        logged = tracking.log_params_flat(cfg)
    params = store.get_run(run.info.run_id).data.params
    assert params == logged and len(params) == 156
    assert params["model.preset"] == "tiny" and params["model.heads.out_dim"] == "8"
    assert json.loads(params["model.patch"]) == [4, 16, 16] and json.loads(params["optim.betas"]) == [0.9, 0.95]
    assert float(params["optim.lr"]) == 1e-4 and params["many.k149"] == "149"
    assert len(params["note"]) == 6000 and params["note"].endswith("...")


def test_metrics_batched_with_steps(store, parent):
    with tracking.step_run("pretrain", parent) as run:
        run_id = run.info.run_id
        with tracking.MetricLogger(run_id, flush_every=3) as metrics:
            for step in range(7):
                metrics.log(step, loss=1.0 / (step + 1), lr=step * 1e-5)
                if step == 4:  # 3 steps flushed, 2 still buffered
                    assert [m.step for m in store.get_metric_history(run_id, "loss")] == [0, 1, 2]
    hist = sorted(store.get_metric_history(run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in hist] == list(range(7))
    assert [m.value for m in hist] == pytest.approx([1.0 / (s + 1) for s in range(7)])
    assert len(store.get_metric_history(run_id, "lr")) == 7


def test_non_finite_metric_raises_naming_it(store, parent):
    with tracking.step_run("pretrain", parent) as run:
        run_id = run.info.run_id
        metrics = tracking.MetricLogger(run_id, flush_every=50)
        metrics.log(0, loss=1.0, loss_mmd=0.5)
        with pytest.raises(tracking.NonFiniteLoss, match=r"loss_mmd=nan at step 1") as err:
            metrics.log(1, loss=2.0, loss_mmd=math.nan)
        assert isinstance(err.value, ValueError)
        unchecked = tracking.MetricLogger(run_id, flush_every=1, check_finite=False)
        unchecked.log(2, grad_norm=math.inf)
    assert [m.step for m in store.get_metric_history(run_id, "loss")] == [0]  # history flushed, NaN step not
    assert [m.step for m in store.get_metric_history(run_id, "loss_mmd")] == [0]
    # unchecked values are logged as they are (MLflow's sqlite store clamps inf to the largest float)
    assert store.get_metric_history(run_id, "grad_norm")[0].value >= 1.7e308


def test_log_png_figure_and_path(store, parent, tmp_path):
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "curve.png")
    with tracking.step_run("report", parent) as run:
        assert tracking.log_png(fig, "plots/loss.png") == "plots/loss.png"
        assert tracking.log_png(tmp_path / "curve.png", "other.png") == "other.png"
        assert tracking.log_png(tmp_path / "curve.png", "plots") == "plots/curve.png"  # a folder keeps the name
    plt.close(fig)
    names = {a.path for a in store.list_artifacts(run.info.run_id, "plots")}
    assert names == {"plots/loss.png", "plots/curve.png"}
    assert "other.png" in {a.path for a in store.list_artifacts(run.info.run_id)}


def test_parent_race_nests_under_the_winner(store, tmp_path, monkeypatch):
    out = tmp_path / "outputs"
    winner = tracking.parent_run_id(outputs_dir=tmp_path / "winner")
    real = tracking._write_exclusive

    def lose(path, text):  # another first step writes its record between our check and our write
        real(path, json.dumps({"run_id": winner}))
        return real(path, text)

    monkeypatch.setattr(tracking, "_write_exclusive", lose)
    before = {r.info.run_id for r in store.search_runs([tracking.experiment_id()])}
    assert tracking.parent_run_id(outputs_dir=out) == winner
    after = {r.info.run_id for r in store.search_runs([tracking.experiment_id()])}
    assert after == before  # the loser's parent run was deleted, not left dangling


PASSWORD = "Sup3r-s3cret-pw"


def _dead_port() -> int:
    with socket.socket() as s:  # bound, then released: nothing listens on it
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def reconnect(store):
    """For tests that connect() elsewhere: the module's store is connected again afterwards."""
    uri = tracking._connected["uri"]
    yield
    tracking.connect(uri)


def test_file_store_uri_and_plain_directory_work(tmp_path, monkeypatch, reconnect):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # MLflow 3 refuses its file store without it
    monkeypatch.chdir(tmp_path)
    for given, expected in (
        ((tmp_path / "a").as_uri(), tmp_path / "a"),
        ("relative/store", tmp_path / "relative/store"),
    ):
        uri = tracking.connect(given)
        assert uri == expected.as_uri()  # a plain directory is anchored: every step means the same one
        parent = tracking.parent_run_id(outputs_dir=tmp_path / expected.name)
        with tracking.step_run("eval", parent) as run:
            tracking.log_params_flat({"dataset": "esc10"})
            with tracking.MetricLogger(run.info.run_id) as metrics:
                metrics.log(1, top1=50.0)
        got = mlflow.MlflowClient(uri).get_run(run.info.run_id)
        assert got.data.params == {"dataset": "esc10"} and got.data.metrics == {"top1": 50.0}
        assert got.info.status == "FINISHED" and (expected / tracking.experiment_id()).is_dir()


def test_unwritable_file_store_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="not a writable directory") as err:
        tracking.connect((tmp_path / "file" / "store").as_uri())
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("scheme", "driver", "package"),
    [
        ("postgresql", "psycopg", "psycopg"),  # SQLAlchemy 2.1's default PostgreSQL driver
        ("postgresql+psycopg2", "psycopg2", "psycopg2-binary"),
        ("mysql+pymysql", "pymysql", "PyMySQL"),
    ],
)
def test_sql_store_names_its_missing_driver_and_never_the_password(scheme, driver, package):
    import importlib.util

    uri = f"{scheme}://bob:{PASSWORD}@127.0.0.1:{_dead_port()}/mlflow"
    with pytest.raises(UsageError) as err:
        tracking.connect(uri)
    message = str(err.value)
    if importlib.util.find_spec(driver) is None:  # the image ships neither: refused, naming what to install
        assert f"needs the database driver {driver}, which is not installed (pip install {package})" in message
    else:  # with the driver, the preflight reaches for the database port
        assert "is unreachable" in message
    assert PASSWORD not in message and "bob:***" not in message and "://***@127.0.0.1" in message
    assert "\n" not in message


def test_unsupported_store_is_refused_in_one_line():
    with pytest.raises(UsageError, match=r"ftp://\*\*\*@host/x is not supported here; use sqlite:///PATH"):
        tracking.connect(f"ftp://bob:{PASSWORD}@host/x")


def test_credentials_are_masked_in_errors(monkeypatch):
    monkeypatch.setattr(tracking, "CONNECT_TIMEOUT_S", 2.0)
    port = _dead_port()
    with pytest.raises(UsageError) as err:
        tracking.connect(f"http://alice:{PASSWORD}@127.0.0.1:{port}")
    assert str(err.value).startswith(f"MLflow tracking server http://***@127.0.0.1:{port} is unreachable")
    assert PASSWORD not in str(err.value)
    assert tracking.redact(f"postgresql://u:{PASSWORD}@h/db?password={PASSWORD}") == (
        "postgresql://***@h/db?password=***"
    )


def test_training_logger_survives_a_dead_store_and_replays_after_resume(store, parent, tmp_path, monkeypatch, capsys):
    with tracking.step_run("pretrain", parent) as run:
        run_id = run.info.run_id
    pending, real = tmp_path / "pending_metrics.jsonl", tracking._connected["uri"]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # refused at once: keeps the test short
    monkeypatch.setitem(tracking._connected, "uri", f"http://alice:{PASSWORD}@127.0.0.1:{_dead_port()}")
    logger = tracking.MetricLogger(run_id, flush_every=2, check_finite=False, pending=pending)
    for step in range(1, 5):  # flushes after steps 2 and 4 fail: no exception, training goes on
        logger.log(step, loss=1.0 / step)
    assert logger.flush() is False and logger.unsent == 4
    err = capsys.readouterr().err
    assert err.count("WARNING xkd.tracking.runs: MLflow tracking store") == 1 and len(err.strip().splitlines()) == 1
    assert f"unsent metrics wait in {pending}" in err and PASSWORD not in err
    assert [json.loads(line)["step"] for line in pending.read_text().splitlines()] == [1, 2, 3, 4]

    # the process dies; the restart resumes from the step-3 checkpoint and logs step 4 again itself
    monkeypatch.setitem(tracking._connected, "uri", real)
    again = tracking.MetricLogger(run_id, check_finite=False, pending=pending, resume_step=3)
    assert again.unsent == 3
    again.log(4, loss=0.25)
    again.close()
    assert sorted(m.step for m in store.get_metric_history(run_id, "loss")) == [1, 2, 3, 4]
    assert not pending.exists()
    again.persist()  # replaying values already stored adds nothing: MLflow keeps one of identical metrics
    tracking.MetricLogger(run_id, pending=pending).close()
    assert len(store.get_metric_history(run_id, "loss")) == 4


def test_training_logger_never_waits_longer_than_its_timeout(store, parent, tmp_path, capsys):
    with tracking.step_run("pretrain", parent) as run:
        run_id = run.info.run_id
    with socket.socket() as hung:  # accepts connections (backlog) but never answers: a hung server
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        with pytest.MonkeyPatch.context() as mp:
            mp.setitem(tracking._connected, "uri", f"http://127.0.0.1:{hung.getsockname()[1]}")
            logger = tracking.MetricLogger(run_id, pending=tmp_path / "p.jsonl", flush_timeout=1.0)
            logger.log(1, loss=1.0)
            t0 = time.monotonic()
            assert logger.flush() is False
            assert logger.flush() is False  # the first flush still waits on the server: no second one piles up
            assert time.monotonic() - t0 < 3
    assert "no answer within 1 s" in capsys.readouterr().err
    assert json.loads((tmp_path / "p.jsonl").read_text())["step"] == 1
