"""The input geometry comes from the model config (issue 13, corpus preset): the paper's for the presets, a small
one for short clips (configs/pretrain/avdigits.yaml: 1-s views, 8x64^2), refused when its audio and video spans
disagree; pretraining views, the model, checkpoint selection and evaluation all follow it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import model as xkd_model
from xkd.data import geometry, logmel
from xkd.data.geometry import PAPER, Geometry
from xkd.data.photometric import finish_batch
from xkd.data.pretrain_dataset import PretrainDataset, ViewConfig, collate
from xkd.errors import UsageError
from xkd.evaluation.features import FeatureSource, frozen_features
from xkd.evaluation.views import EvalClips, EvalViews, ViewSettings, encoder_geometry
from xkd.train.config import load_config

SMALL = dict(
    video_input=(3, 8, 64, 64),
    video_tubelet=(4, 16, 16),
    video_local=(3, 4, 48, 48),
    audio_input=(1, 80, 112),
    audio_local=(1, 80, 48),
)


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outputs/mlflow_parent.json of a pretraining run lands here
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture(scope="module")
def small_caches(tmp_path_factory, micro_av_dir) -> dict[str, Path]:
    """Real sample clips extracted as the avdigits config wants them: 8 fps, short side 64; and their log-mels."""
    from components.cache_spectrograms import run as cache_spectrograms
    from components.extract_clips import run as extract

    root = tmp_path_factory.mktemp("small_geometry")
    extract(str(micro_av_dir), str(root / "clips"), short_side=64, workers=1)
    cache_spectrograms(str(root / "spectrograms"), clips=str(root / "clips"), workers=1)
    return {"clips": root / "clips", "spectrograms": root / "spectrograms"}


def test_the_presets_have_the_paper_geometry_of_the_module_constants():
    for preset in ("base", "tiny"):
        for variant in ("xkd", "mas", "mats"):
            assert Geometry.from_model(xkd_model.preset(preset, variant)) == PAPER
    assert PAPER == Geometry(
        fps=geometry.FPS,
        clip_frames=geometry.CLIP_FRAMES,
        clip_samples=geometry.CLIP_SAMPLES,
        clip_spec_frames=geometry.CLIP_SPEC_FRAMES,
        size=geometry.VIDEO_SIZE,
        local_frames=geometry.LOCAL_FRAMES,
        local_size=geometry.LOCAL_SIZE,
        local_samples=geometry.LOCAL_SAMPLES,
        local_spec_frames=logmel.frames_for(geometry.LOCAL_SAMPLES),
    )
    assert PAPER.clip_s == 4 and ViewConfig.from_config(load_config("tiny")).geometry == PAPER


def test_the_avdigits_config_takes_one_second_views():
    cfg = load_config("avdigits")
    geom = ViewConfig.from_config(cfg).geometry
    assert (cfg.model.preset, cfg.train.batch_size, cfg.model.lr, cfg.train.precision) == ("tiny", 32, 1e-3, "fp32")
    assert cfg.data.audio_source == "spectrogram"
    assert (geom.clip_frames, geom.clip_samples, geom.clip_spec_frames, geom.size) == (8, 16000, 112, 64)
    assert (geom.local_frames, geom.local_size, geom.local_spec_frames) == (4, 48, 48)
    assert geom.clip_s == 1.0 and logmel.frames_for(geom.local_samples) == 48
    assert geom == Geometry.from_model(xkd_model.preset("tiny", **SMALL))


@pytest.mark.parametrize(
    "override, message",
    [
        # the audio window must span the video window's seconds: the message names the value that fits
        (
            "model.audio_input=[1, 80, 448]",
            r"model.audio_input .*8 frames at 8 fps .*set model.audio_input to \[1, 80, 112\]",
        ),
        ("model.video_local=[3, 12, 48, 48]", r"model.video_local \(3, 12, 48, 48\) is larger than model.video_input"),
        ("model.audio_local=[1, 80, 128]", r"model.audio_local \(1, 80, 128\) is longer than model.audio_input"),
        ("model.video_local=[3, 4, 40, 40]", r"model.video_local / model.video_tubelet: .*not divisible by patch"),
        ("model.video_input=[3, 8, 64, 48]", r"model.video_input \(3, 8, 64, 48\): .*square"),
        ("model.audio_local=[1, 64, 48]", r"model.audio_local \(1, 64, 48\): .*80 mel bands"),
    ],
)
def test_a_geometry_the_views_cannot_produce_is_refused_naming_the_keys(override, message):
    with pytest.raises(UsageError, match=f"^model: {message}") as err:
        load_config("avdigits", [override])
    assert "\n" not in str(err.value)


def test_a_small_geometry_sample_has_its_shapes_and_trains_the_model(small_caches):
    from xkd.train.engine import train_step

    cfg = load_config("avdigits")
    for source in ("waveform", "spectrogram"):
        views = dataclasses.replace(ViewConfig.from_config(cfg), audio_source=source)
        data = PretrainDataset(small_caches["clips"], small_caches["spectrograms"], views, seed=5)
        sample = data[(0, 0, 0)]
        assert sample["video"].shape == (3, 8, 64, 64) and sample["video"].dtype == torch.uint8
        assert [v.shape for v in sample["video_local"]] == [(3, 4, 48, 48)]
        assert sample["audio"].shape == (1, 80, 112) and [a.shape for a in sample["audio_local"]] == [(1, 80, 48)]
    torch.manual_seed(0)
    net = xkd_model.build(cfg.model)
    opt = xkd_model.build_optimizer(net, cfg.model.lr, cfg.model.weight_decay, cfg.model.betas)
    before = net.video_student.encoder.patch_embed.proj.weight.detach().clone()
    batch = finish_batch(collate([data[(i, 0, i)] for i in range(len(data))]))
    out = train_step(net, opt, [batch], clip_grad=0.3, lr=cfg.model.lr, weight_decay=0.05, ema_momentum=0.99)
    assert all(torch.isfinite(torch.tensor(v)) for v in out.terms.values()) and out.grad_norm > 0
    assert not torch.equal(before, net.video_student.encoder.patch_embed.proj.weight)


def test_eval_views_and_features_follow_the_encoder_geometry(small_caches, tmp_path):
    torch.manual_seed(0)
    bundle = tmp_path / "bundle"
    xkd_model.export_bundle(xkd_model.build(xkd_model.preset("tiny", **SMALL)), bundle)
    geom = encoder_geometry(bundle)
    assert geom.clip_frames == 8 and geom.size == 64 and encoder_geometry(None, "tiny") == PAPER
    views = EvalViews(small_caches["clips"], small_caches["spectrograms"], geom)
    cid = views.ids()[0]
    vs = ViewSettings(train_views=3, test_clips=2, test_crops=3)
    assert views.views(cid, "video", vs).shape == (6, 3, 8, 64, 64)
    assert views.views(cid, "audio", vs).shape == (2, 1, 80, 112)
    g = torch.Generator().manual_seed(1)
    assert views.views(cid, "video", vs, g).shape == (3, 3, 8, 64, 64)
    # the first test window of a clip starts at 0: exactly the first 112 cached log-mel frames (1 s)
    spec = torch.from_numpy(views.specs.spectrogram(cid))
    assert torch.equal(views.views(cid, "audio", ViewSettings(test_clips=1))[0, 0], spec[:, :112])
    item = EvalClips(small_caches["clips"], small_caches["spectrograms"], clips_per_video=2, geometry=geom)[0]
    assert item["video"].shape == (2, 3, 8, 64, 64) and item["audio"].shape == (2, 1, 80, 112)

    ids = [c for c in views.ids() if views.specs.entries.get(c)]
    cache = tmp_path / "features"
    small = frozen_features(FeatureSource("encoder", bundle), small_caches["clips"], small_caches["spectrograms"],
                            ids, vs, cache, geom)  # fmt: skip
    assert small["train"].shape == (len(ids), 3, 128) and small["test"].shape == (len(ids), 6, 128)  # 64 + 64
    # a hand-made control in the paper geometry sees 4-s windows: another feature-cache entry, other numbers
    px = {g.clip_frames: frozen_features(FeatureSource("pixel-stats"), small_caches["clips"], None, ids, vs, cache, g)
          for g in (geom, PAPER)}  # fmt: skip
    assert px[8]["test"].shape == px[32]["test"].shape and not torch.allclose(px[8]["test"], px[32]["test"])
    assert len(list(cache.glob("video-*.safetensors"))) == 3


def test_paper_geometry_eval_views_and_cache_keys_are_those_of_the_default(small_caches, tmp_path):
    """Evaluating a paper-geometry encoder (both presets) gives the numbers and feature-cache entries the views
    gave before geometries existed: the default views are the paper's, and an explicit size 112 is the default."""
    torch.manual_seed(0)
    bundle = tmp_path / "bundle"
    xkd_model.export_bundle(xkd_model.build(xkd_model.preset("tiny")), bundle)
    assert encoder_geometry(bundle) == PAPER
    clips, specs = small_caches["clips"], small_caches["spectrograms"]
    default, paper = EvalViews(clips, specs), EvalViews(clips, specs, encoder_geometry(bundle))
    vs = ViewSettings(train_views=2, test_clips=2)
    cid = default.ids()[0]
    for modality in ("video", "audio"):
        a = default.views(cid, modality, vs, torch.Generator().manual_seed(3))
        b = paper.views(
            cid, modality, ViewSettings(train_views=2, test_clips=2, size=112), torch.Generator().manual_seed(3)
        )
        assert torch.equal(a, b) and a.shape[2] == (32 if modality == "video" else 80)
    ids = [c for c in default.ids() if default.specs.entries.get(c)]
    source = FeatureSource("logmel-stats")
    first = frozen_features(source, None, specs, ids, vs, tmp_path / "f", PAPER)
    again = frozen_features(
        source, None, specs, ids, ViewSettings(train_views=2, test_clips=2, size=112), tmp_path / "f"
    )
    assert len(list((tmp_path / "f").glob("*.safetensors"))) == 1  # one cache entry: the same key
    assert all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.slow
def test_pretrain_select_and_evaluate_with_the_avdigits_config(small_caches, tmp_path):
    """`components.pretrain --config avdigits` runs on an 8 fps / 64 px cache, checkpoint selection scores its
    checkpoints on 1-s views, and the selected bundle's features are the 1-s geometry's."""
    from components.pretrain import run as pretrain
    from components.select_checkpoint import run as select

    clips, specs = str(small_caches["clips"]), str(small_caches["spectrograms"])
    overrides = ["train.batch_size=2", "checkpoint.every_steps=2", "data.holdout_fraction=0.34"]
    final = pretrain("avdigits", clips, specs, str(tmp_path / "pre"), max_steps=2, overrides=overrides)
    assert json.loads((final / "config.json").read_text())["video_input"] == [3, 8, 64, 64]
    select(str(tmp_path / "pre"), clips, specs, str(tmp_path / "sel"), register=False)
    selection = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert {c["role"] for c in selection["candidates"]} == {"student", "teacher"}
    assert all(torch.isfinite(torch.tensor(c["val_loss"])) for c in selection["candidates"])
    geom = encoder_geometry(tmp_path / "sel" / "bundle")
    assert (geom.clip_frames, geom.clip_spec_frames) == (8, 112)
    item = EvalClips(clips, specs, clips_per_video=1, geometry=geom)[0]
    assert item["video"].shape == (1, 3, 8, 64, 64) and item["audio"].shape == (1, 1, 80, 112)


@pytest.mark.slow
def test_evaluate_views_a_small_geometry_bundle_in_its_own_windows(tmp_path):
    """`components.evaluate` on fsdd with a 1-s encoder computes its features on 1-s windows (the bundle's
    geometry), not on the paper's 4-s ones the encoder would otherwise accept through pos-embed interpolation."""
    import shutil

    from components.cache_spectrograms import run as cache_spectrograms
    from components.evaluate import run as evaluate
    from xkd.paths import REPO

    folder = tmp_path / "fsdd" / "recordings"
    folder.mkdir(parents=True)
    for name in (f"{digit}_{speaker}_0.wav" for speaker in ("george", "jackson", "lucas") for digit in range(10)):
        shutil.copyfile(REPO / "data" / "fsdd" / "recordings" / name, folder / name)
    specs = tmp_path / "fsdd" / "spectrograms"
    cache_spectrograms(str(specs), input=str(folder), min_duration=0.1, workers=1)
    torch.manual_seed(0)
    bundle = tmp_path / "bundle"
    xkd_model.export_bundle(xkd_model.build(xkd_model.preset("tiny", **SMALL)), bundle)
    config = tmp_path / "svm.yaml"
    config.write_text("svm: {C: [0.1, 1.0], train_views: 2, test_clips: 1, gain_jitter: 0.1, val_fraction: 0.2}\n")
    cache = tmp_path / "features"
    m = evaluate(str(bundle), "fsdd", "svm", str(tmp_path / "fsdd"), str(tmp_path / "out"), config=str(config),
                 feature_cache=str(cache))  # fmt: skip
    assert len(m["folds"]) == 3 and 0 <= m["mean"] <= 100
    (written,) = cache.glob("audio-*.safetensors")
    from safetensors import safe_open

    with safe_open(str(written), framework="pt") as f:  # the features evaluate computed, in their clip order
        ids, got = json.loads(f.metadata()["clip_ids"]), {k: f.get_tensor(k) for k in f.keys()}
    vs = ViewSettings(train_views=2, test_clips=1, gain_jitter=0.1)
    source = FeatureSource("encoder", bundle)
    one_s = frozen_features(source, None, specs, ids, vs, None, encoder_geometry(bundle))
    four_s = frozen_features(source, None, specs, ids, vs, None, PAPER)
    assert torch.equal(got["test"], one_s["test"]) and not torch.allclose(got["test"], four_s["test"])


def test_the_configs_crop_area_ranges_reach_the_pretraining_views(monkeypatch, micro_clips):
    """data.global_scale / data.local_scale (a corpus whose object is small in the frame needs whole-object crops)
    are the ranges the views' RandomResizedCrop draws from; the default stays the official 0.2-1 / 0.08-0.4."""
    from xkd.data import views

    drawn = []
    real_rrc = views.rrc_params
    monkeypatch.setattr(
        views, "rrc_params", lambda g, h, w, scale: drawn.append(tuple(scale)) or real_rrc(g, h, w, scale)
    )
    default = ViewConfig.from_config(load_config("tiny"))
    assert (default.global_scale, default.local_scale) == ((0.2, 1.0), (0.08, 0.4))
    cfg = load_config("tiny", ["data.global_scale=[0.6,1.0]", "data.local_scale=[0.5,0.9]"])
    PretrainDataset(str(micro_clips), None, ViewConfig.from_config(cfg), seed=0)[0]
    assert drawn == [(0.6, 1.0), (0.5, 0.9)]
    with pytest.raises(UsageError, match="data.local_scale: an area range needs 0 < low <= high <= 1"):
        load_config("tiny", ["data.local_scale=[0.9,0.5]"])
