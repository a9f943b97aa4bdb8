"""Pretraining on real sample clips (tiny preset): logged terms, exact resume after SIGKILL at fixed points,
2-process torchrun, MLflow nesting, config errors, the EMA closed form."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sample_data import REPO

from xkd.errors import UsageError

pytestmark = pytest.mark.slow

STEPS = 12
OVERRIDES = ["checkpoint.every_steps=4", "model.lr=5e-4"]


def command(clips, output, steps: int = STEPS) -> list[str]:
    args = ["--config", "tiny", "--clips", str(clips), "--output", str(output), "--max-steps", str(steps)]
    for o in OVERRIDES:
        args += ["--set", o]
    return [sys.executable, "-m", "components.pretrain", *args]


def launch(clips, output, env_extra=None, wait=True, steps: int = STEPS):
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{Path(output).parent / 'mlflow.db'}",
        "PYTHONPATH": str(REPO),
        **(env_extra or {}),
    }
    proc = subprocess.Popen(
        command(clips, output, steps),
        cwd=Path(output).parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if wait:
        out, err = proc.communicate(timeout=600)
        return proc.returncode, err
    return proc


def final_state(output) -> dict[str, torch.Tensor]:
    last = sorted((Path(output) / "checkpoints").glob("ckpt-*"))[-1]
    assert last.name == f"ckpt-{STEPS:08d}"
    return load_file(str(last / "model.safetensors"))


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, micro_clips):
    """An uninterrupted run: the weights every resumed run must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("ref") / "out"
    code, err = launch(micro_clips, out)
    assert code == 0, err[-3000:]
    return out


def test_every_term_is_logged_finite_and_the_loss_falls(reference):
    rows = [json.loads(l) for l in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    terms = (
        "total",
        "rec_v",
        "rec_a",
        "kd_vt2as",
        "kd_at2vs",
        "mmd_student",
        "mmd_teacher",
        "lr",
        "ema_momentum",
        "teacher_temp_video",
        "teacher_temp_audio",
        "grad_norm",
        "clips_per_s",
    )
    for r in rows:
        assert all(torch.isfinite(torch.tensor(r[t])) for t in terms), r
    totals = [r["total"] for r in rows]
    assert sum(totals[-4:]) / 4 < sum(totals[:4]) / 4
    assert rows[0]["ema_momentum"] == pytest.approx(0.997) and rows[-1]["lr"] < rows[1]["lr"]
    assert (reference / "loss_curves.png").stat().st_size > 10_000
    final = reference / "final"
    assert {p.name for p in final.iterdir()} == {
        "video_student.safetensors",
        "video_teacher.safetensors",
        "audio_student.safetensors",
        "audio_teacher.safetensors",
        "config.json",
    }
    kept = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert kept == ["ckpt-00000004", "ckpt-00000008", "ckpt-00000012"]
    assert all((reference / "checkpoints" / k / "bundle" / "video_teacher.safetensors").exists() for k in kept)


def test_mlflow_run_is_nested_with_params_and_metrics(reference):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{reference.parent / 'mlflow.db'}")
    run_id = json.loads((reference / "run.json").read_text())["mlflow_run_id"]
    run = client.get_run(run_id)
    parent = json.loads((reference.parent / "outputs" / "mlflow_parent.json").read_text())["run_id"]
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params["model.preset"] == "tiny" and run.data.params["train.max_steps"] == str(STEPS)
    assert run.data.params["model.lr"] == "0.0005" and "derived.effective_batch" in run.data.params
    history = client.get_metric_history(run_id, "total")
    assert [m.step for m in history] == list(range(1, STEPS + 1))
    # the clip cache is an input named by its dataset and split: lineage.cache.<dataset>/train/clips
    assert any(k.startswith("lineage.cache.") and k.endswith("/train/clips") for k in run.data.tags)
    assert run.info.status == "FINISHED"


def _resume_matches(reference, micro_clips, tmp_path, fault: str):
    out = tmp_path / "out"
    code, _ = launch(micro_clips, out, {"XKD_FAULT": fault})
    assert code == -signal.SIGKILL
    run_id = json.loads((out / "run.json").read_text()).get("mlflow_run_id")
    code, err = launch(micro_clips, out)
    assert code == 0, err[-3000:]
    assert_identical(final_state(out), final_state(reference))
    assert json.loads((out / "run.json").read_text())["mlflow_run_id"] == run_id  # the same MLflow run goes on
    return out


def test_killed_after_a_step_resumes_bit_identical(reference, micro_clips, tmp_path):
    _resume_matches(reference, micro_clips, tmp_path, "after_step:6")


def test_killed_between_temp_write_and_rename_resumes_bit_identical(reference, micro_clips, tmp_path):
    out = _resume_matches(reference, micro_clips, tmp_path, "before_rename:8")
    assert not list((out / "checkpoints").glob(".tmp-*"))


@pytest.mark.parametrize(
    "fault",
    [
        "after_step:3",  # before the first checkpoint: the restart begins again from step 0, same MLflow run
        "before_export:12",  # after the last checkpoint, before the final bundle: the restart only exports
    ],
)
def test_killed_before_any_checkpoint_or_before_the_export_resumes_bit_identical(
    reference, micro_clips, tmp_path, fault
):
    # fixed kill points (not a kill at a random time) so that a failure reproduces with the same XKD_FAULT
    out = _resume_matches(reference, micro_clips, tmp_path, fault)
    for name in ("video_teacher", "audio_student"):
        ref = load_file(str(reference / "final" / f"{name}.safetensors"))
        assert_identical(load_file(str(out / "final" / f"{name}.safetensors")), ref)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # no step logged twice


def test_a_resumed_run_moved_under_a_new_pipeline_run_shows_its_code_and_input_names(
    micro_clips, tmp_path, monkeypatch
):
    """An output left by an older version (run.json naming its MLflow run, nested under an earlier pipeline run,
    with the input names and git commit of then) resumed by a new pipeline run: the run moves under the new parent
    and shows the lineage tags of that pipeline run and the inputs under their current names."""
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from xkd.tracking import lineage
    from xkd.tracking import runs as tracking
    from xkd.train.config import load_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("XKD_PIPELINE_RUN", "older")
    for name in (tracking.PARENT_ENV, "DVC_STAGE"):
        monkeypatch.delenv(name, raising=False)
    tracking.connect()
    with tracking.step_run("pretrain", tracking.parent_run_id()) as old:  # as the older version logged it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a local path matches two equivalent MLflow source types
            source = resolve_dataset_source(str(micro_clips.resolve()))
        mlflow.log_input(MetaDataset(source=source, name="clips", digest="0ld"), context="training")
        mlflow.set_tags({"lineage.git_commit": "0" * 40, "lineage.git_dirty": "True"})
    out = tmp_path / "out"
    out.mkdir()
    state = {"config_hash": load_config("tiny", [*OVERRIDES, "train.max_steps=2"]).resume_hash()}
    (out / "run.json").write_text(json.dumps({**state, "mlflow_run_id": old.info.run_id}))

    code, err = launch(micro_clips, out, {"XKD_PIPELINE_RUN": "newer"}, steps=2)
    assert code == 0, err[-3000:]
    client = mlflow.MlflowClient()
    run = client.get_run(old.info.run_id)
    parent = client.get_run(json.loads((tmp_path / "outputs" / "mlflow_parent.json").read_text())["run_id"])
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    for tag in ("lineage.git_commit", "lineage.git_dirty"):  # the state the new pipeline run took at its start
        assert run.data.tags[tag] == parent.data.tags[tag], tag
    names = {d.dataset.name for d in run.inputs.dataset_inputs}
    assert f"{lineage.cache_dataset(micro_clips)}/train/clips" in names
    assert f"lineage.cache.{lineage.cache_dataset(micro_clips)}/train/clips" in run.data.tags


def test_torchrun_two_cpu_processes(micro_clips, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(REPO)}
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "components.pretrain",
        "--config",
        "tiny",
        "--clips",
        str(micro_clips),
        "--output",
        str(out),
        "--max-steps",
        "3",
        "--set",
        "train.batch_size=1",
        "--set",
        "train.check_replicas_every=1",
    ]
    done = subprocess.run(torchrun, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    # replicas are compared (weights + DINO centres) after every step: a divergence would fail the run
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    params = (
        __import__("mlflow")
        .MlflowClient(env["MLFLOW_TRACKING_URI"])
        .get_run(json.loads((out / "run.json").read_text())["mlflow_run_id"])
        .data.params
    )
    assert params["derived.world_size"] == "2" and params["derived.effective_batch"] == "2"


def test_bad_config_key_and_changed_config_are_clear_errors(reference, micro_clips, tmp_path, monkeypatch):
    from components.pretrain import run

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="unknown config key train.batchsize"):
        run("tiny", str(micro_clips), None, str(tmp_path / "o"), overrides=["train.batchsize=3"])
    with pytest.raises(UsageError, match="model: unknown config key 'widht'"):
        run("tiny", str(micro_clips), None, str(tmp_path / "o"), overrides=["model.widht=3"])
    with pytest.raises(UsageError, match="holds a run with another config"):
        run(
            "tiny",
            str(micro_clips),
            None,
            str(reference),
            max_steps=STEPS,
            overrides=["checkpoint.every_steps=4", "model.lr=1e-3"],
        )


def test_one_step_ema_update_equals_the_closed_form(micro_clips, tmp_path, monkeypatch):
    import model as xkd_model
    from components.pretrain import run
    from xkd.train.config import load_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    cfg = load_config("tiny", ["train.max_steps=1"])
    torch.manual_seed(cfg.train.seed)
    initial = xkd_model.build(cfg.model).state_dict()
    run("tiny", str(micro_clips), None, str(tmp_path / "out"), max_steps=1)
    after = final_state_at(tmp_path / "out", 1)
    m = 0.997  # the EMA schedule's first value
    for key in (k for k in after if k.startswith("video_teacher.encoder.blocks.0.attn.qkv")):
        student = after[key.replace("teacher", "student")]
        expected = m * initial[key] + (1 - m) * student  # the teacher started as a copy of the student
        assert torch.allclose(after[key], expected, atol=1e-7), key
        assert not torch.equal(after[key], initial[key])


def final_state_at(output, step):
    return load_file(str(Path(output) / "checkpoints" / f"ckpt-{step:08d}" / "model.safetensors"))


def test_selection_scores_every_checkpoint_and_role_and_registers_the_champion(
    reference, micro_clips, tmp_path, monkeypatch
):
    import mlflow

    import model as xkd_model
    from components.select_checkpoint import run
    from xkd.tracking import registry

    monkeypatch.chdir(reference.parent)  # the pipeline's outputs/mlflow_parent.json
    uri = f"sqlite:///{reference.parent / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    split = json.loads((reference / "holdout.json").read_text())
    assert split["holdout"] and not set(split["holdout"]) & set(split["train"])
    sel = run(str(reference), str(micro_clips), None, str(tmp_path / "select"))
    cands = sel["candidates"]
    assert sorted((c["step"], c["role"]) for c in cands) == [(s, r) for s in (4, 8, 12) for r in ("student", "teacher")]
    assert sel["winner"]["val_loss"] == min(c["val_loss"] for c in cands)
    assert all(torch.isfinite(torch.tensor(c["val_loss"])) for c in cands)
    on_disk = json.loads((tmp_path / "select" / "selection.json").read_text())
    assert on_disk["winner"] == sel["winner"] and "test" not in on_disk["rule"]
    enc = xkd_model.load_encoder(tmp_path / "select" / "bundle" / f"video_{sel['role']}.safetensors")
    assert enc(torch.zeros(1, 3, 32, 112, 112)).shape[1] == 393  # CLS + 392 tokens

    client = mlflow.MlflowClient(uri)
    version = client.get_model_version_by_alias("xkd-encoder", "champion")
    assert int(version.version) == sel["registered"]["version"]
    assert version.tags["role"] == sel["role"] and any(k.startswith("lineage.cache") for k in version.tags)
    again = run(str(reference), str(micro_clips), None, str(tmp_path / "select2"))
    assert again["registered"]["version"] == sel["registered"]["version"] + 1
    assert int(client.get_model_version_by_alias("xkd-encoder", "champion").version) == again["registered"]["version"]
    assert registry.load_champion(dst=tmp_path / "champion").joinpath("config.json").exists()


def test_non_finite_loss_stops_naming_the_term_and_bad_tracking_fails_at_start(micro_clips, tmp_path, monkeypatch):
    from components.pretrain import run

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    # a zero teacher temperature makes the video-teacher -> audio-student distillation term non-finite
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 0: .*kd_vt2as"):
        run(
            "tiny",
            str(micro_clips),
            None,
            str(tmp_path / "nan"),
            max_steps=2,
            overrides=["model.video_teacher_temp=0.0", "model.video_warmup_teacher_temp=0.0"],
        )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(UsageError, match="127.0.0.1:9"):
        run("tiny", str(micro_clips), None, str(tmp_path / "unreachable"), max_steps=2)
    assert not (tmp_path / "unreachable" / "checkpoints").exists()
