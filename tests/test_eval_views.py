"""Evaluation views: one implementation for EvalClips and the production feature path, audio and video
windows of the same view covering the same time span (by the streams' start times), the crop size from
the settings, feature caches keyed by the view code, and caches at a foreign geometry refused up front."""

import math

import pytest
import torch

from xkd.data.logmel import HOP
from xkd.data.photometric import IMAGENET_MEAN, IMAGENET_STD
from xkd.errors import UsageError
from xkd.evaluation import views as eval_views
from xkd.evaluation.features import ViewSettings, compute
from xkd.evaluation.views import EvalClips, EvalViews


@pytest.fixture(scope="module")
def late(tmp_path_factory):
    import view_caches

    return view_caches.late_audio(tmp_path_factory)


@pytest.fixture(scope="module")
def fps16(tmp_path_factory):
    import view_caches

    return view_caches.fps16(tmp_path_factory)


class Recorder:
    """A feature source that keeps the views it is given (and returns a few numbers per view)."""

    kind = "recorder"

    def __init__(self):
        self.seen = {}

    def digest(self, modality):
        return "recorder"

    def __call__(self, modality, x):
        self.seen.setdefault(modality, []).append(x.clone())
        return x.flatten(1)[:, :4].float()


def _features(ev, vs, cache_dir=None, source=None):
    source = source or Recorder()
    out = {m: compute(source, m, ev, ["late_audio"], vs, cache_dir) for m in ("video", "audio")}
    return source, out


def _aligned_windows(entry, k):
    """The t0 rule written out: the video window start on the 8 fps grid, inside the audio stream."""
    fps, sr = entry["video"]["fps"], entry["audio"]["sample_rate"]
    offset = entry["audio"]["start_s"] - entry["video"]["start_s"]
    lo = math.ceil(offset * fps)
    hi = min(entry["video"]["frames"] - 32, math.floor((offset * sr + entry["audio"]["samples"] - 64000) * fps / sr))
    frame0s = [lo + round(p * (hi - lo)) for p in ([0.0] if k == 1 else [i / (k - 1) for i in range(k)])]
    return [(f, round((f / fps - offset) * sr)) for f in frame0s]


def test_test_views_of_video_and_audio_cover_the_same_time_span(late):
    ev = EvalViews(late["clips"], late["spectrograms"])
    entry = ev.clips.entry("late_audio")
    assert entry["audio"]["start_s"] - entry["video"]["start_s"] > 0.7  # the audio starts 0.73 s later
    source, _ = _features(ev, ViewSettings(train_views=2, test_clips=2, test_crops=1))
    video_test, audio_test = source.seen["video"][-1], source.seen["audio"][-1]
    frames = ev.clips.clip("late_audio")[0].permute(3, 0, 1, 2).float() / 255  # [3, T, 112, 149]
    spec = torch.from_numpy(ev.specs.spectrogram("late_audio"))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    wins = _aligned_windows(entry, 2)
    assert wins[0][0] > 0 and wins[0][1] < 1000  # the first window starts where the audio does
    for i, (frame0, sample0) in enumerate(wins):
        left = (frames.shape[-1] - 112) // 2
        expected = (frames[:, frame0 : frame0 + 32, :, left : left + 112] - mean) / std
        assert torch.allclose(video_test[i], expected, atol=1e-5)
        first = round(sample0 / HOP)
        assert torch.equal(audio_test[i, 0], spec[:, first : first + 448])


def test_train_views_of_video_and_audio_cover_the_same_time_span(late, monkeypatch):
    from xkd.data import views

    ev = EvalViews(late["clips"], late["spectrograms"])
    entry = ev.clips.entry("late_audio")
    seen = {"frame0": [], "sample0": []}
    window_frames, audio_global = views.window_frames, views.audio_global

    def spy_frames(video, frame0, *a, **k):
        seen["frame0"].append(frame0)
        return window_frames(video, frame0, *a, **k)

    def spy_audio(g, wave, spec, sample0, *a, **k):
        seen["sample0"].append((g is not None, sample0))
        return audio_global(g, wave, spec, sample0, *a, **k)

    monkeypatch.setattr(views, "window_frames", spy_frames)
    monkeypatch.setattr(views, "audio_global", spy_audio)
    _features(ev, ViewSettings(train_views=6, test_clips=1))
    train_frames = seen["frame0"][:6]  # train views first, then the test view
    train_samples = [s for augmented, s in seen["sample0"] if augmented]
    offset = entry["audio"]["start_s"] - entry["video"]["start_s"]
    assert len(set(train_frames)) > 1  # the windows are drawn
    assert train_samples == [
        round((f / entry["video"]["fps"] - offset) * entry["audio"]["sample_rate"]) for f in train_frames
    ]


def test_eval_clips_and_the_production_path_give_identical_views(late):
    source, _ = _features(
        EvalViews(late["clips"], late["spectrograms"]), ViewSettings(train_views=1, test_clips=3, test_crops=3)
    )
    item = EvalClips(late["clips"], late["spectrograms"], clips_per_video=3, crops=3)[0]
    assert item["video"].shape == (9, 3, 32, 112, 112) and item["audio"].shape == (3, 1, 80, 448)
    assert torch.equal(item["video"], source.seen["video"][-1])
    assert torch.equal(item["audio"], source.seen["audio"][-1])


def test_the_crop_size_comes_from_the_settings(late):
    source, _ = _features(
        EvalViews(late["clips"], late["spectrograms"]), ViewSettings(train_views=2, test_clips=1, size=96)
    )
    train, test = source.seen["video"]
    assert train.shape == (2, 3, 32, 96, 96) and test.shape == (1, 3, 32, 96, 96)
    assert ViewSettings.from_settings({"size": 96, "test_clips": 2}) == ViewSettings(size=96, test_clips=2)


def test_cached_features_are_keyed_by_the_view_code(late, tmp_path, monkeypatch):
    ev = EvalViews(late["clips"], late["spectrograms"])
    vs = ViewSettings(train_views=1, test_clips=1)
    _features(ev, vs, tmp_path)
    again = Recorder()
    _features(ev, vs, tmp_path, again)
    assert again.seen == {}  # reused
    monkeypatch.setattr(eval_views, "VIEWS_VERSION", eval_views.VIEWS_VERSION + 1)
    _features(ev, vs, tmp_path, again)
    assert set(again.seen) == {"video", "audio"}  # the view code changed: recomputed, not reused
    assert len(list(tmp_path.glob("video-*.safetensors"))) == 2


def test_a_clip_cache_at_another_fps_is_refused_by_evaluation(fps16, tmp_path):
    for make in (
        lambda: EvalClips(fps16["clips"], fps16["spectrograms"]),
        lambda: EvalViews(fps16["clips"], None),
    ):
        with pytest.raises(UsageError, match=r"(?s)fps16.*16(\.0)? fps.*re-extract with --fps 8"):
            make()
    import model as xkd_model
    from components.evaluate import run

    torch.manual_seed(0)
    xkd_model.export_bundle(xkd_model.build(xkd_model.preset("tiny")), tmp_path / "bundle")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "clips").symlink_to(fps16["clips"])
    with pytest.raises(UsageError, match="re-extract with --fps 8"):
        run(str(tmp_path / "bundle"), "samples-av", "svm", str(tmp_path / "root"), str(tmp_path / "out"))
