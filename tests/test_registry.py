"""xkd.tracking.registry on a temporary sqlite store with a real tiny encoder bundle: the registered version is an
MLflow pyfunc model (models-from-code, safetensors, no pickle) that loads, predicts and serves embeddings."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
import pytest
import torch

import model
from xkd.errors import UsageError
from xkd.tracking import registry
from xkd.tracking import runs as tracking


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Two selections (two runs) registered in one store: versions 1 and 2 (2 embeds with the teacher)."""
    root = tmp_path_factory.mktemp("registry")
    bundle = root / "bundle"
    torch.manual_seed(0)
    net = model.build(model.preset("tiny"))
    with torch.no_grad():  # a fresh model's teachers are copies of its students: make the roles tell apart
        for p in (*net.video_teacher.parameters(), *net.audio_teacher.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    model.export_bundle(net, bundle)
    (bundle / "notes.txt").write_text("not part of the bundle")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv(tracking.PARENT_ENV, raising=False)
        tracking.connect()
        parent = tracking.parent_run_id(outputs_dir=root / "outputs")
        versions, runs = [], []
        for i, role in enumerate(("student", "teacher")):
            with tracking.step_run("select_checkpoint", parent) as run:
                tags = {"selection.rule": "val_loss", "round": i, "role": role}
                versions.append(registry.register_encoder(bundle, run.info.run_id, tags=tags, description=f"round {i}"))
                runs.append(run.info.run_id)
        yield {"client": mlflow.MlflowClient(uri), "bundle": bundle, "versions": versions, "runs": runs, "uri": uri}


def _model_dir(client, version) -> Path:
    """Where the version's logged model keeps its files (a file:// artifact location here)."""
    mv = client.get_model_version("xkd-encoder", str(version))
    location = client.get_logged_model(registry.logged_model_id(mv)).artifact_location
    return Path(unquote(urlparse(location).path))


@pytest.fixture(scope="module")
def real_views(micro_clips, micro_spectrograms):
    """The test views of one real sample clip with both streams, as the evaluation feeds the encoders."""
    from xkd.evaluation.views import EvalClips

    clips = EvalClips(micro_clips, micro_spectrograms, clips_per_video=2)
    item = next(clips[i] for i in range(len(clips)) if "video" in clips[i] and "audio" in clips[i])
    return {"video": item["video"].numpy(), "audio": item["audio"].numpy()}


def _expected(bundle: Path, role: str, views: dict) -> dict:
    with torch.no_grad():
        return {
            m: model.load_encoder(bundle / f"{m}_{role}.safetensors").eval().features(torch.from_numpy(v)).numpy()
            for m, v in views.items()
        }


def test_versions_and_alias(registered):
    client = registered["client"]
    assert registered["versions"] == [1, 2]
    champ = client.get_model_version_by_alias("xkd-encoder", "champion")
    assert int(champ.version) == 2 and champ.run_id == registered["runs"][1]
    assert champ.current_stage in (None, "None")  # aliases, never stages
    assert champ.tags["selection.rule"] == "val_loss" and champ.tags["round"] == "1" and champ.tags["role"] == "teacher"
    assert champ.tags["bundle.preset"] == "tiny" and champ.tags["bundle.format"] == "xkd-encoder/1"
    assert len([k for k in champ.tags if k.startswith("bundle.sha256.")]) == 5
    assert champ.description == "round 1"


def test_the_version_is_a_pyfunc_model_over_the_safetensors_bundle_and_no_pickle(registered):
    client = registered["client"]
    for version in registered["versions"]:
        files = sorted(
            p.relative_to(_model_dir(client, version)).as_posix() for p in _model_dir(client, version).rglob("*")
        )
        assert "MLmodel" in files and "encoder_model.py" in files  # models-from-code: the code is the model
        bundle = sorted(f.split("/", 2)[2] for f in files if f.startswith("artifacts/bundle/"))
        assert bundle == sorted(registry.BUNDLE_FILES)  # notes.txt stayed out
        assert not any(f.endswith((".pkl", ".pickle", ".cloudpickle")) for f in files)
        assert "python_model.pkl" not in files
    champ = client.get_model_version_by_alias("xkd-encoder", "champion")
    assert champ.source.startswith("models:/m-")


def test_pyfunc_load_model_predicts_the_embeddings_of_a_real_clip(registered, real_views, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered["uri"])
    encoder = mlflow.pyfunc.load_model("models:/xkd-encoder@champion")
    sig = encoder.metadata.signature
    assert {s.name: s.shape for s in sig.inputs.inputs} == {"video": (-1, 3, 32, 112, 112), "audio": (-1, 1, 80, 448)}
    assert {s.name: (s.type, s.shape) for s in sig.outputs.inputs} == {
        "video": (np.dtype("float32"), (-1, 64)),
        "audio": (np.dtype("float32"), (-1, 64)),
    }
    out = encoder.predict(real_views)
    want = _expected(registered["bundle"], "teacher", real_views)  # the role the version was registered with
    assert out.keys() == {"video", "audio"} and out["video"].shape == (2, 64) and out["audio"].shape == (2, 64)
    for m in want:
        np.testing.assert_allclose(out[m], want[m], rtol=1e-5, atol=1e-6)
    student = encoder.predict(real_views, params={"role": "student"})
    np.testing.assert_allclose(
        student["video"], _expected(registered["bundle"], "student", real_views)["video"], rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(student["video"], out["video"])  # the student and teacher of the export differ
    with pytest.raises(mlflow.exceptions.MlflowException, match="shape"):
        encoder.predict({"video": real_views["video"][:, :, :8], "audio": real_views["audio"]})


def test_load_champion_loads_with_model_load_encoder(registered, tmp_path):
    out = registry.load_champion(dst=tmp_path / "champ")
    assert tmp_path / "champ" in out.parents
    assert sorted(p.name for p in out.iterdir()) == sorted(registry.BUNDLE_FILES)
    assert not list((tmp_path / "champ").rglob("*.pkl"))
    enc = model.load_encoder(out / "video_student.safetensors")
    ref = model.load_encoder(registered["bundle"] / "video_student.safetensors")
    assert enc.bundle_meta["modality"] == "video" and enc.bundle_meta["preset"] == "tiny"
    for (k, a), (_, b) in zip(enc.state_dict().items(), ref.state_dict().items()):
        assert a.equal(b), k


def test_load_champion_errors(registered, tmp_path):
    client = registered["client"]
    with pytest.raises(UsageError, match="has alias 'nope'"):
        registry.load_champion(alias="nope", dst=tmp_path / "a")
    # a modified artifact-store copy is caught by the digest tags
    client.set_registered_model_alias("xkd-encoder", "old", "1")
    (_model_dir(client, 1) / "artifacts" / "bundle" / "config.json").write_text("{}\n")
    with pytest.raises(UsageError, match="sha256 differs"):
        registry.load_champion(alias="old", dst=tmp_path / "b")


def test_register_rejects_incomplete_bundle(registered, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(registered["bundle"], broken)
    (broken / "audio_teacher.safetensors").unlink()
    with pytest.raises(UsageError, match="missing audio_teacher.safetensors"):
        registry.register_encoder(broken, registered["runs"][0])
    (broken / "audio_teacher.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UsageError, match="not a safetensors file"):
        registry.register_encoder(broken, registered["runs"][0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_embeddings_of_a_real_clip_over_http(registered, real_views, tmp_path):
    port = _free_port()
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_cli), "models", "serve", "-m", "models:/xkd-encoder@champion", "--env-manager", "local"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--timeout", "600"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered["uri"], "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{mlflow_cli.parent}:{env['PATH']}"  # serve execs `uvicorn` from PATH: the venv's
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - the server process owns it
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 400  # imports take minutes on a busy machine
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        one = {m: v[:1] for m, v in real_views.items()}  # one window: 1.2 M numbers of JSON for the video
        body = json.dumps({"inputs": {m: v.tolist() for m, v in one.items()}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=300) as r:
            answer = json.loads(r.read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    want = _expected(registered["bundle"], "teacher", one)
    for m in ("video", "audio"):
        np.testing.assert_allclose(np.asarray(answer[m], dtype=np.float32), want[m], rtol=1e-4, atol=1e-5)
