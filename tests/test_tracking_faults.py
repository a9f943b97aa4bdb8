"""Tracking-server faults against a real `mlflow server` (127.0.0.1 only): a server killed in the middle of a
tiny pretraining and started again, a server gone until the end of training, a server down before
checkpoint selection and evaluation. Training must never wait on the store, no metric may be lost, and the
password in the tracking URI must never be shown or written."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
from sample_data import REPO

pytestmark = pytest.mark.slow

PASSWORD = "Sup3r-s3cret-pw"
STEPS = 20
MLFLOW = Path(sys.executable).parent / "mlflow"


def free_port() -> int:
    with socket.socket() as s:  # bound, then released: nothing listens on it afterwards
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


class Server:
    """`mlflow server` on a sqlite backend; kill() and start() again on the same port and database."""

    def __init__(self, root: Path):
        self.root, self.port, self.proc = root, free_port(), None
        self.plain_uri = f"http://127.0.0.1:{self.port}"
        self.uri = f"http://alice:{PASSWORD}@127.0.0.1:{self.port}"  # a server without auth ignores them

    def start(self) -> None:
        cmd = [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        cmd += ["--backend-store-uri", f"sqlite:///{self.root / 'server.db'}"]
        cmd += ["--artifacts-destination", str(self.root / "artifacts")]
        log = open(self.root / "server.log", "a")  # noqa: SIM115 - the server process owns it
        self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=log, stderr=log, start_new_session=True)
        wait_for(self.healthy, 120, "mlflow server /health")

    def healthy(self) -> bool:
        assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(self.plain_uri + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the server and its workers
            self.proc.wait()

    def steps(self, run_id: str, key: str = "total") -> list[int]:
        history = mlflow.MlflowClient(self.plain_uri).get_metric_history(run_id, key)
        return sorted(m.step for m in history)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("mlflow_server"))
    srv.start()
    yield srv
    srv.kill()


def pretrain(clips, out: Path, uri: str, steps: int, every: int = 2) -> subprocess.Popen:
    args = ["--config", "tiny", "--clips", str(clips), "--output", str(out), "--max-steps", str(steps)]
    for o in (f"checkpoint.every_steps={every}", "checkpoint.keep=50", "train.log_every=1"):
        args += ["--set", o]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_PARENT_RUN_ID", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = [open(out.parent / f"{out.name}.{n}", "w") for n in ("stdout", "stderr")]  # noqa: SIM115
    cmd = [sys.executable, "-m", "components.pretrain", *args]
    return subprocess.Popen(cmd, cwd=out.parent, env=env, stdout=logs[0], stderr=logs[1])


def finish(proc: subprocess.Popen, out: Path) -> tuple[int, str, str]:
    try:
        code = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, *(Path(f"{out}.{n}").read_text() for n in ("stdout", "stderr"))


def last_step(out: Path) -> int:
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1])["step"] if lines else 0


def ckpt(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"ckpt-{step:08d}"


def assert_no_password(*texts: str, roots: tuple[Path, ...] = ()) -> None:
    for text in texts:
        assert PASSWORD not in text
    for root in roots:
        for f in root.rglob("*"):
            if f.is_file():
                assert PASSWORD.encode() not in f.read_bytes(), f


@pytest.fixture(scope="module")
def outage_run(server, micro_clips, tmp_path_factory):
    """20 steps, a checkpoint every 4; the server is killed once step 3 is logged and started again only
    after two checkpoints were written without it (MLflow's own retries would hold the first for minutes)."""
    work = tmp_path_factory.mktemp("outage")
    out = work / "out"
    proc = pretrain(micro_clips, out, server.uri, STEPS, every=4)
    try:
        wait_for(lambda: last_step(out) >= 3 or proc.poll() is not None, 600, "step 3")
        assert proc.poll() is None, Path(f"{out}.stderr").read_text()[-3000:]
        server.kill()
        killed_at = last_step(out)
        # the next two checkpoints come while the store is dead: training must not wait on it
        wait_for(lambda: ckpt(out, 4 * (killed_at // 4) + 8).exists(), 90, "two checkpoints with the server dead")
        # the server takes 20-80 s to start on a busy machine: training waits (SIGSTOP) so that the store is
        # back before training ends, whatever the machine's speed
        proc.send_signal(signal.SIGSTOP)
        try:
            server.start()
        finally:
            proc.send_signal(signal.SIGCONT)
    except BaseException:
        proc.kill()
        if server.proc is None or server.proc.poll() is not None:
            server.start()  # the other tests need it
        raise
    code, stdout, stderr = finish(proc, out)
    return {"work": work, "out": out, "code": code, "stdout": stdout, "stderr": stderr, "killed_at": killed_at}


def test_training_outlives_a_killed_server_and_its_metrics_are_complete(outage_run, server):
    r, out = outage_run, outage_run["out"]
    assert r["code"] == 0, r["stderr"][-3000:]
    assert r["killed_at"] < 8  # the outage really overlapped training and its checkpoints
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == [
        ckpt(out, s).name for s in range(4, STEPS + 1, 4)
    ]
    assert (out / "final" / "config.json").exists()
    run_id = json.loads((out / "run.json").read_text())["mlflow_run_id"]
    # every step reached the store once it was back: the buffered ones replayed, none twice
    assert server.steps(run_id) == list(range(1, STEPS + 1))
    assert server.steps(run_id, "lr") == list(range(1, STEPS + 1))
    # one line for the outage, not one per flush or retry, and on a line of its own (not glued to the bar)
    assert r["stderr"].count("WARNING xkd.tracking.runs: MLflow tracking store") == 1, r["stderr"][-3000:]
    outage = (
        f"Z WARNING xkd.tracking.runs: MLflow tracking store http://127.0.0.1:{server.port} failed (Connection refused)"
    )
    assert outage in r["stderr"].replace("\r", "\n")
    assert "Traceback" not in r["stderr"] and "reachable again" in r["stderr"]
    assert not (out / "pending_metrics.jsonl").exists()
    assert mlflow.MlflowClient(server.plain_uri).get_run(run_id).info.status == "FINISHED"
    assert_no_password(r["stdout"], r["stderr"], roots=(r["work"],))
    parent = json.loads((r["work"] / "outputs" / "mlflow_parent.json").read_text())
    assert parent["tracking_uri"] == f"http://127.0.0.1:{server.port}"  # usable as it is, with the env's login


def test_metrics_a_dead_server_missed_are_replayed_by_the_rerun(server, micro_clips, tmp_path):
    out = tmp_path / "out"
    proc = pretrain(micro_clips, out, server.uri, 8)
    try:
        wait_for(lambda: last_step(out) >= 3 or proc.poll() is not None, 600, "step 3")
        assert proc.poll() is None, Path(f"{out}.stderr").read_text()[-3000:]
        server.kill()  # and it stays down until training is over
        code, stdout, stderr = finish(proc, out)
    finally:
        if server.proc.poll() is not None:
            server.start()
    assert code == 2, stderr[-3000:]  # training and the final bundle are saved, the tracking is incomplete
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("error: ")
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == [ckpt(out, s).name for s in range(2, 9, 2)]
    assert (out / "final" / "config.json").exists()
    pending = [json.loads(line) for line in (out / "pending_metrics.jsonl").read_text().splitlines()]
    assert max(row["step"] for row in pending) == 8
    run_id = json.loads((out / "run.json").read_text())["mlflow_run_id"]
    assert server.steps(run_id) != list(range(1, 9))

    code, stdout2, stderr2 = finish(pretrain(micro_clips, out, server.uri, 8), out)  # the same command again
    assert code == 0, stderr2[-3000:]
    assert server.steps(run_id) == list(range(1, 9)) and server.steps(run_id, "grad_norm") == list(range(1, 9))
    assert not (out / "pending_metrics.jsonl").exists()
    assert_no_password(stdout, stderr, stdout2, stderr2, roots=(tmp_path,))


@pytest.fixture(scope="module")
def pretrained(micro_clips, tmp_path_factory):
    """A short pretraining on a sqlite store: checkpoints and a hold-out for checkpoint selection."""
    out = tmp_path_factory.mktemp("pretrained") / "out"
    code, _, stderr = finish(pretrain(micro_clips, out, f"sqlite:///{out.parent / 'mlflow.db'}", 4), out)
    assert code == 0, stderr[-3000:]
    return out


def test_a_dead_server_stops_selection_and_evaluation_before_any_work(
    pretrained, micro_clips, micro_esc_spectrograms, tmp_path
):
    dead = f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": dead, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    data = tmp_path / "esc_micro"
    data.mkdir()
    (data / "spectrograms").symlink_to(micro_esc_spectrograms)
    steps = {
        "select": ["components.select_checkpoint", "--pretrain", str(pretrained), "--clips", str(micro_clips)],
        "evaluate": ["components.evaluate", "--dataset", "esc10", "--protocol", "svm", "--folds", "1,2"]
        + ["--features", "logmel-stats", "--data", str(data)],
    }
    for name, args in steps.items():
        t0 = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", *args, "--output", str(tmp_path / name)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 2, done.stderr[-3000:]
        assert done.stderr.strip().splitlines() == [
            f"error: MLflow tracking server http://***@127.0.0.1:{dead.rsplit(':', 1)[1]} is unreachable "
            "([Errno 111] Connection refused); start it or set MLFLOW_TRACKING_URI to a reachable store"
        ]
        assert not (tmp_path / name).exists()  # nothing scored, nothing written
        assert time.monotonic() - t0 < 60  # interpreter and imports only, on a shared CPU
        assert_no_password(done.stdout, done.stderr)
