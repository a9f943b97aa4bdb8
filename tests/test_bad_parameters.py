"""Bad parameters (issue 16): refused up front with one `error:` line and exit 2, before --output is touched;
a run that crashed early does not lock its output; damaged checkpoints and bundles are named, not loaded."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import model as xkd_model
from components import cache_spectrograms, evaluate, pretrain, select_checkpoint
from model.bundle import BundleError, load_encoder
from xkd.errors import UsageError
from xkd.train import checkpoint


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


def _refused(capsys, main, argv: list[str], *expect: str) -> str:
    """`main(argv)` exits 2 with exactly one `error:` line containing every `expect`."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for text in expect:
        assert text in err, err
    return err


def _pretrain_args(clips, out, *sets: str, config: str = "tiny", max_steps: int = 2) -> list[str]:
    args = ["--config", config, "--clips", str(clips), "--output", str(out)]
    if not any(s.startswith("train.max_steps=") for s in sets):  # --max-steps would override it
        args += ["--max-steps", str(max_steps)]
    for s in sets:
        args += ["--set", s]
    return args


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.batch_size=abc", "train.batch_size"),
        ("train.max_steps=1.5", "train.max_steps"),
        ("train.log_every=0", "train.log_every"),  # was a ZeroDivisionError after the first step
        ("checkpoint.every_steps=0", "checkpoint.every_steps"),  # likewise
        ("checkpoint.keep=-1", "checkpoint.keep"),  # deleted every checkpoint and exited 0
        ("checkpoint.keep=0", "checkpoint.keep"),  # never pruned
        ("checkpoint.every_minutes=-1", "checkpoint.every_minutes"),
        ("data.audio_source=wave", "data.audio_source"),
        ("data.holdout_min=-3", "data.holdout_min"),
        ("data.holdout_fraction=true", "data.holdout_fraction"),
        ("model.width=1.5", "model.width"),
        ("model.epochs=0", "model.epochs"),
        ("model.video_mask_ratio=1.5", "model.video_mask_ratio"),
        ("train.precision=fp8", "train.precision"),
        ("train.no_such_key=1", "train.no_such_key"),
    ],
)
def test_a_bad_config_value_is_one_line_before_any_output(micro_clips, tmp_path, capsys, override, key):
    out = tmp_path / "out"
    _refused(capsys, pretrain.main, _pretrain_args(micro_clips, out, override), key)
    assert not out.exists()


@pytest.mark.parametrize(
    "text, expect",
    [
        ("train: [batch_size: 2\n", "not valid YAML"),
        ("- model\n- train\n", "mapping of sections"),
        ("train: 5\n", "'train' must be a mapping"),
    ],
)
def test_a_broken_config_file_is_one_line(micro_clips, tmp_path, capsys, text, expect):
    config = tmp_path / "broken.yaml"
    config.write_text(text)
    out = tmp_path / "out"
    _refused(capsys, pretrain.main, _pretrain_args(micro_clips, out, config=str(config)), expect)
    assert not out.exists()


def test_missing_or_empty_clips_and_a_file_as_output_are_refused_before_writing(micro_clips, tmp_path, capsys):
    out = tmp_path / "out"
    _refused(capsys, pretrain.main, _pretrain_args(tmp_path / "nowhere", out), "--clips", "nowhere")
    (tmp_path / "empty").mkdir()
    _refused(capsys, pretrain.main, _pretrain_args(tmp_path / "empty", out), "--clips", "no manifest.jsonl")
    (tmp_path / "no_clips").mkdir()
    (tmp_path / "no_clips" / "manifest.jsonl").write_text("")
    _refused(capsys, pretrain.main, _pretrain_args(tmp_path / "no_clips", out), "holds no clips")
    assert not out.exists()
    _refused(capsys, pretrain.main, _pretrain_args(micro_clips, out, "data.audio_source=spectrogram"), "--spectrograms")
    assert not out.exists()
    as_file = tmp_path / "out.txt"
    as_file.write_text("keep me")
    _refused(capsys, pretrain.main, _pretrain_args(micro_clips, as_file), "is a file")
    assert as_file.read_text() == "keep me"


@pytest.fixture(scope="module")
def recovered(tmp_path_factory, micro_clips):
    """A run that passes validation but crashes at step 0 (a zero teacher temperature), then the fixed
    command on the same --output: 4 steps with checkpoints at 2 and 4."""
    base = tmp_path_factory.mktemp("recovered")
    out = base / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
        crash = ["model.video_teacher_temp=0.0", "model.video_warmup_teacher_temp=0.0"]
        with pytest.raises(FloatingPointError):
            pretrain.run("tiny", str(micro_clips), None, str(out), max_steps=2, overrides=crash)
        first = json.loads((out / "run.json").read_text())
        code = pretrain.main(_pretrain_args(micro_clips, out, "checkpoint.every_steps=2", max_steps=4))
    return out, first, code


@pytest.mark.slow
def test_a_run_that_crashed_before_its_first_checkpoint_does_not_lock_its_output(recovered, micro_clips, capsys):
    out, first, code = recovered
    assert code == 0  # was: "holds a run with another config" for every later run
    state = json.loads((out / "run.json").read_text())
    assert state["config_hash"] != first["config_hash"]
    assert state["mlflow_run_id"] != first.get("mlflow_run_id")  # a new MLflow run: the params differ
    assert [p.name for p in checkpoint.checkpoint_dirs(out)] == ["ckpt-00000002", "ckpt-00000004"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # once a checkpoint exists, another config is still refused (resume safety)
    _refused(capsys, pretrain.main, _pretrain_args(micro_clips, out, "model.lr=1e-3"), "another config")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, micro_clips):
    """A clean 4-step run with checkpoints at steps 2 and 4 (and a hold-out), for checkpoint selection."""
    base = tmp_path_factory.mktemp("pretrained")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
        pretrain.run(
            "tiny", str(micro_clips), None, str(base / "out"), max_steps=4, overrides=["checkpoint.every_steps=2"]
        )
    return base / "out"


def _flip_byte_in_tensor_data(path, name: str) -> None:
    """Flip one byte inside tensor `name` of a safetensors file (header intact: the file still parses)."""
    blob = bytearray(path.read_bytes())
    header_len = int.from_bytes(blob[:8], "little")
    start, _ = json.loads(blob[8 : 8 + header_len])[name]["data_offsets"]
    blob[8 + header_len + start + 1] ^= 0x40
    path.write_bytes(bytes(blob))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["config.json", "bundle tensor", "model.safetensors"])
def test_select_checkpoint_refuses_a_damaged_checkpoint_before_scoring(
    pretrained, micro_clips, tmp_path, capsys, monkeypatch, damage
):
    from xkd.train import selection

    pre = tmp_path / "pre"
    shutil.copytree(pretrained, pre)
    first, last = checkpoint.checkpoint_dirs(pre)
    if damage == "config.json":
        (last / "bundle" / "config.json").write_text('{"preset": "tiny", "width": ')
        target = last / "bundle" / "config.json"
    elif damage == "bundle tensor":
        target = last / "bundle" / "video_teacher.safetensors"
        _flip_byte_in_tensor_data(target, "pos_embed")
    else:
        target = last / "model.safetensors"
        _flip_byte_in_tensor_data(target, "video_student.encoder.pos_embed")

    def no_scoring(*args, **kwargs):
        raise AssertionError("scoring started before the checkpoints were verified")

    monkeypatch.setattr(selection, "score_checkpoints", no_scoring)
    argv = ["--pretrain", str(pre), "--clips", str(micro_clips), "--output", str(tmp_path / "sel"), "--no-register"]
    _refused(capsys, select_checkpoint.main, argv, str(target))
    assert not (tmp_path / "sel").exists()


@pytest.fixture
def bundle(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "bundle"
    xkd_model.export_bundle(xkd_model.build(xkd_model.preset("tiny")), out)
    return out


def _rewrite(path, edit, drop_digest: bool = False) -> None:
    """Rewrite a bundle file with edited tensors and the metadata it had (as a bad copy or a hand edit would)."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    if drop_digest:
        meta.pop("tensors_sha256", None)
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata=meta)


def _set_pos(value):
    def edit(tensors):
        tensors["pos_embed"][0, 3, 5] = value

    return edit


@pytest.mark.parametrize("value, expect", [(3.4e5, "damaged"), (float("nan"), "non-finite")])
def test_a_corrupted_position_embedding_is_refused(bundle, value, expect):
    path = bundle / "video_student.safetensors"
    _rewrite(path, _set_pos(value))
    with pytest.raises(BundleError, match=rf"{path}.*{expect}"):
        load_encoder(path)


def test_a_flipped_byte_is_caught_by_the_export_digest(bundle):
    path = bundle / "audio_teacher.safetensors"
    _flip_byte_in_tensor_data(path, "blocks.0.attn.qkv.weight")  # a small change: finite, plausible
    with pytest.raises(BundleError, match=rf"{path}.*sha256"):
        load_encoder(path)


def test_a_tensor_of_the_wrong_shape_is_refused(bundle):
    path = bundle / "video_student.safetensors"

    def shorter(tensors):
        tensors["pos_embed"] = tensors["pos_embed"][:, :-1].clone()

    _rewrite(path, shorter)
    with pytest.raises(BundleError, match=r"pos_embed has shape \(1, 392, 64\)"):
        load_encoder(path)


def test_a_bundle_without_a_digest_still_loads_and_is_still_checked(bundle):
    path = bundle / "audio_student.safetensors"
    _rewrite(path, lambda tensors: None, drop_digest=True)  # as written before the digest existed
    assert "tensors_sha256" not in load_encoder(path).bundle_meta
    _rewrite(path, _set_pos(float("inf")), drop_digest=True)
    with pytest.raises(BundleError, match="non-finite"):
        load_encoder(path)


@pytest.mark.parametrize("text", ['{"preset": "tiny", "width": ', '{"preset": "huge"}', "[1, 2]"])
def test_a_corrupt_bundle_config_json_is_refused(bundle, text):
    from model.bundle import verify_bundle

    (bundle / "config.json").write_text(text)
    with pytest.raises(BundleError, match="config.json is corrupt or not a model config"):
        verify_bundle(bundle)


@pytest.mark.parametrize("damage", ["config.json", "tensor"])
def test_evaluate_refuses_a_damaged_bundle_before_any_evaluation(
    bundle, micro_esc_spectrograms, tmp_path, capsys, monkeypatch, damage
):
    from xkd.evaluation import features

    if damage == "config.json":
        target = bundle / "config.json"
        target.write_text("{not json")
    else:
        target = bundle / "audio_student.safetensors"
        _flip_byte_in_tensor_data(target, "norm.weight")

    def no_features(*args, **kwargs):
        raise AssertionError("features were computed before the bundle was verified")

    monkeypatch.setattr(features, "frozen_features", no_features)
    root = tmp_path / "esc"
    root.mkdir()
    (root / "spectrograms").symlink_to(micro_esc_spectrograms)
    argv = ["--encoder", str(bundle), "--dataset", "esc10", "--protocol", "svm", "--folds", "1"]
    argv += ["--data", str(root), "--output", str(tmp_path / "eval")]
    _refused(capsys, evaluate.main, argv, str(target))
    assert not (tmp_path / "eval").exists() and not (root / "features").exists()


def _save(tmp_path):
    torch.manual_seed(0)
    return checkpoint.save(
        tmp_path, xkd_model.build(xkd_model.preset("tiny")), {"step": 8, "epoch": 1, "batch_in_epoch": 2}, keep=1
    )


def _torch_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    "content",
    [
        b"hello, not a checkpoint\n" * 8,  # was a KeyError out of the unpickler
        _torch_bytes({"step": 8}),  # no data position or RNG state: was a KeyError mid-resume
        _torch_bytes([1, 2]),  # was a TypeError
    ],
)
def test_a_foreign_trainer_pt_on_resume_is_one_clear_error(tmp_path, content):
    final = _save(tmp_path)
    (final / "checksums.json").unlink(missing_ok=True)  # as a checkpoint written before checksums existed
    (final / "trainer.pt").write_bytes(content)
    with pytest.raises(UsageError, match=rf"{final / 'trainer.pt'} is corrupt") as err:
        checkpoint.load_latest(tmp_path, xkd_model.build(xkd_model.preset("tiny")))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["trainer.pt", "model.safetensors"])
def test_a_flipped_byte_in_a_checkpoint_is_caught_on_resume(tmp_path, name):
    final = _save(tmp_path)
    blob = bytearray((final / name).read_bytes())
    blob[len(blob) * 3 // 4] ^= 0x40  # inside the tensor data: it still loads without complaint
    (final / name).write_bytes(bytes(blob))
    with pytest.raises(UsageError, match=rf"{final / name} is corrupt.*sha256"):
        checkpoint.load_latest(tmp_path, xkd_model.build(xkd_model.preset("tiny")))


@pytest.mark.parametrize("flag, value, expect", [("workers", 0, "--workers"), ("min_duration", -5.0, "--min-duration")])
def test_cache_spectrograms_refuses_zero_workers_and_a_negative_min_duration(
    micro_clips, tmp_path, flag, value, expect
):
    with pytest.raises(UsageError, match=expect):
        cache_spectrograms.run(str(tmp_path / "specs"), clips=str(micro_clips), **{flag: value})
    assert not (tmp_path / "specs").exists()


def test_require_audio_is_parsed_strictly(monkeypatch):
    from components import extract_clips
    from pipelines import tasks
    from pipelines.flags import strict_bool

    assert [strict_bool(v, "x") for v in (True, False, "true", "False", " TRUE ")] == [True, False, True, False, True]
    for bad in ("no", "0", "", None, 1, "yes"):
        with pytest.raises(UsageError, match="x must be true or false"):
            strict_bool(bad, "x")
    seen = []
    monkeypatch.setattr(extract_clips, "run", lambda *a, **kw: seen.append(kw["require_audio"]))
    body = tasks.extract_clips.python_func
    common = dict(part_list="/d/p/part-0.txt", cache_dir="/d/c", fps=8.0, short_side=112, sample_rate=16000)
    body(**common, min_duration=1.0, workers=1, require_audio="false")
    body(**common, min_duration=1.0, workers=1, require_audio="true")
    body(**common, min_duration=1.0, workers=1, require_audio=False)
    assert seen == [False, True, False]  # "false" meant true under bool()
    with pytest.raises(UsageError, match="require_audio must be true or false"):
        body(**common, min_duration=1.0, workers=1, require_audio="maybe")
