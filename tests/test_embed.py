"""`python -m components.embed`: real media (a video with audio, a silent video, an audio clip, a truncated and an
empty file) -> one embedding per file and modality, the evaluation's test views through the bundle's encoders,
bad files as reject rows; from a bundle directory and from a registered `models:/` version."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from sample_data import AV, ESC, REPO

import model as xkd_model

pytestmark = pytest.mark.slow  # decodes real media and runs encoders in a subprocess (~25 s)

EXPECTED = {  # file -> {modality: status}
    "av.webm": {"video": "ok", "audio": "ok"},
    "silent.avi": {"video": "ok", "audio": "no_audio"},
    "sound.ogg": {"video": "no_video", "audio": "ok"},
    "truncated.mp4": {"video": "unreadable", "audio": "unreadable"},
    "empty.mp4": {"video": "empty_file", "audio": "empty_file"},
}


def _inputs(folder):
    folder.mkdir(parents=True)
    shutil.copy(AV / "big_buck_bunny_432_433.webm", folder / "av.webm")
    shutil.copy(AV / "v_SoccerJuggling_g23_c01.avi", folder / "silent.avi")
    shutil.copy(ESC / "audio" / "1-100032-A-0.ogg", folder / "sound.ogg")
    (folder / "truncated.mp4").write_bytes((AV / "R6llTwEh07w.mp4").read_bytes()[:300_000])  # cut before moov
    (folder / "empty.mp4").write_bytes(b"")
    return folder


def _embed(*args, env=None, stderr=None):
    return subprocess.run(
        [sys.executable, "-m", "components.embed", "--workers", "1", *map(str, args)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=stderr if stderr is not None else subprocess.PIPE,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    xkd_model.export_bundle(xkd_model.build(xkd_model.preset("tiny")), out)
    return out


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, bundle):
    root = tmp_path_factory.mktemp("embed")
    media, out = _inputs(root / "media"), root / "out"
    with open(root / "stderr.log", "w") as err:
        proc = _embed("--model", bundle, "--input", media, "--output", out, stderr=err)
    return {"proc": proc, "media": media, "out": out, "stderr": (root / "stderr.log").read_text()}


def _rows(out):
    with open(out / "index.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_file_and_modality_has_a_row_and_bad_files_are_rejects(embedded):
    assert embedded["proc"].returncode == 0, embedded["stderr"][-3000:]
    out = embedded["out"]
    rows = _rows(out)
    got = {}
    for r in rows:
        got.setdefault(os.path.basename(r["file"]), {})[r["modality"]] = r["status"]
    assert got == EXPECTED
    assert json.loads((out / "index.json").read_text()) == [
        {**r, "shape": [int(n) for n in r["shape"].split("x")] if r["shape"] else None, "path": r["path"] or None}
        for r in rows
    ]
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"] == 5 and report["ok"] == 3 and report["inputs"] == report["ok"] + len(report["rejected"])
    assert sorted((os.path.basename(r["path"]), r["code"]) for r in report["rejected"]) == [
        ("empty.mp4", "empty_file"),
        ("truncated.mp4", "unreadable"),
    ]
    assert all(r["reason"] for r in report["rejected"])
    # the reject summary is in the log: one line per bad file, then the totals
    assert "rejected [unreadable]" in embedded["stderr"] and "rejected [empty_file]" in embedded["stderr"]
    assert "5 inputs, 3 ok, 2 rejected" in embedded["stderr"] and "Traceback" not in embedded["stderr"]


def test_embeddings_are_the_evaluation_test_views_through_the_encoders(embedded, bundle):
    from xkd.evaluation.views import EvalClips

    out = embedded["out"]
    arrays = {(r["clip_id"], r["modality"]): np.load(out / r["path"]) for r in _rows(out) if r["status"] == "ok"}
    assert len(arrays) == 4 and len(list((out / "embeddings").glob("*.npy"))) == 4
    for a in arrays.values():
        assert a.dtype == np.float32 and a.shape == (3, 64) and np.isfinite(a).all()  # 3 windows x tiny width 64
    assert not np.allclose(arrays["av", "video"], arrays["silent", "video"])  # different clips, different vectors
    encoders = {m: xkd_model.load_encoder(bundle / f"{m}_student.safetensors").eval() for m in ("video", "audio")}
    both = EvalClips(out / "cache" / "clips", out / "cache" / "spectrograms", clips_per_video=3)
    audio_only = EvalClips(spectrograms_dir=out / "cache" / "spectrograms", clips_per_video=3)
    with torch.no_grad():
        for (cid, m), got in arrays.items():
            views = both[both.ids.index(cid)] if cid in both.ids else audio_only[audio_only.ids.index(cid)]
            want = encoders[m].features(views[m]).numpy()
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"{cid} {m}")


def test_a_rerun_gives_the_same_embeddings_without_decoding_again(embedded, bundle):
    out = embedded["out"]
    before = {p.name: np.load(p) for p in (out / "embeddings").glob("*.npy")}
    proc = _embed("--model", bundle, "--input", embedded["media"], "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "extract clips: up to date" in proc.stderr and "log-mel spectrograms: up to date" in proc.stderr
    after = {p.name: np.load(p) for p in (out / "embeddings").glob("*.npy")}
    assert after.keys() == before.keys() and all(np.array_equal(after[k], before[k]) for k in before)


def test_a_registered_version_is_resolved_through_mlflow(tmp_path, bundle, monkeypatch, capsys):
    from components.embed import main, run
    from xkd.evaluation.views import EvalClips
    from xkd.tracking import registry
    from xkd.tracking import runs as tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    tracking.connect()
    with tracking.step_run("select_checkpoint", tracking.parent_run_id(outputs_dir=tmp_path / "o")) as run_:
        registry.register_encoder(bundle, run_.info.run_id, tags={"role": "teacher"})
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(AV / "big_buck_bunny_432_433.webm", one / "clip.webm")
    out = tmp_path / "out"
    report = run("models:/xkd-encoder@champion", str(one), str(out), workers=1, device="cpu")
    assert report["role"] == "teacher"  # --role auto: the role selection registered with the version
    assert {r["modality"]: r["status"] for r in _rows(out)} == {"video": "ok", "audio": "ok"}
    teacher = xkd_model.load_encoder(bundle / "video_teacher.safetensors").eval()
    views = EvalClips(out / "cache" / "clips", out / "cache" / "spectrograms")[0]
    with torch.no_grad():
        want = teacher.features(views["video"]).numpy()
    np.testing.assert_allclose(np.load(out / "embeddings" / "clip.video.npy"), want, rtol=1e-4, atol=1e-5)

    capsys.readouterr()
    assert main(["--model", "models:/xkd-encoder@nope", "--input", str(one), "--output", str(tmp_path / "o2")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --model models:/xkd-encoder@nope")


def test_a_folder_holding_one_bundle_is_accepted(tmp_path, bundle):
    from xkd.tracking.model_source import resolve_bundle

    shutil.copytree(bundle, tmp_path / "select" / "bundle")
    (tmp_path / "select" / "selection.json").write_text('{"role": "teacher"}')
    assert resolve_bundle(str(tmp_path / "select")) == (tmp_path / "select" / "bundle", {})
    assert resolve_bundle(str(tmp_path / "select" / "bundle")) == (tmp_path / "select" / "bundle", {})


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{tmp}/nowhere"], "not an encoder bundle directory"),
        (["--model", "models:/xkd-encoder"], "expected models:/NAME@ALIAS"),
        (["--input", "{tmp}/missing.mp4"], "input path does not exist"),
        (["--clips", "0"], "--clips"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, bundle, args, message, capsys):
    from components.embed import main

    argv = {"--model": str(bundle), "--input": str(AV / "big_buck_bunny_432_433.webm"), "--output": str(tmp_path / "o")}
    argv.update(zip(args[::2], (a.format(tmp=tmp_path) for a in args[1::2])))
    assert main([x for kv in argv.items() for x in kv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err


def test_a_bundle_trained_on_short_views_embeds_with_its_own_geometry(tmp_path):
    """A bundle of `configs/pretrain/avdigits.yaml` (1-s views, 8 frames at 64 px, 112 log-mel frames) is embedded
    with the views it was trained on, not refused and not fed 4-s paper views."""
    from xkd.data.geometry import Geometry
    from xkd.evaluation.views import EvalClips
    from xkd.train.config import load_config

    cfg = load_config("configs/pretrain/avdigits.yaml").model
    torch.manual_seed(0)
    small = tmp_path / "bundle"
    xkd_model.export_bundle(xkd_model.build(cfg), small)
    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(AV / "big_buck_bunny_432_433.webm", media / "av.webm")
    proc = _embed("--model", small, "--input", media, "--output", tmp_path / "out", "--clips", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    geom = Geometry.from_model(cfg)
    clips = EvalClips(
        tmp_path / "out" / "cache" / "clips",
        tmp_path / "out" / "cache" / "spectrograms",
        clips_per_video=2,
        geometry=geom,
    )
    views = clips[0]
    assert views["video"].shape == (2, 3, 8, 64, 64) and views["audio"].shape == (2, 1, 80, 112)
    with torch.no_grad():
        for m in ("video", "audio"):
            got = np.load(tmp_path / "out" / "embeddings" / f"av.{m}.npy")
            want = xkd_model.load_encoder(small / f"{m}_student.safetensors").eval().features(views[m]).numpy()
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=m)
