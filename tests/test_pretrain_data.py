"""Pretraining views from the real sample caches: shapes, alignment, augmentation statistics, seeding,
rank/worker coverage, short and unreadable clips, evaluation windows, and a tiny-model step."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from xkd.data import views
from xkd.data.cache import read_audio
from xkd.data.logmel import HOP, log_mel
from xkd.data.photometric import IMAGENET_MEAN, IMAGENET_STD, finish_batch
from xkd.data.pretrain_dataset import EpochSampler, PretrainDataset, UnreadableClip, ViewConfig, collate, sample_seed
from xkd.evaluation.views import EvalClips


@pytest.fixture(scope="module")
def dataset(micro_clips, micro_spectrograms):
    return PretrainDataset(micro_clips, micro_spectrograms, ViewConfig(), seed=7)


def test_views_shapes_dtypes_and_ranges(dataset, micro_clips, micro_spectrograms):
    assert len(dataset) == 3 and dataset.excluded["no_audio"] == ["v_SoccerJuggling_g23_c01"]
    for source in ("waveform", "spectrogram"):
        ds = PretrainDataset(micro_clips, micro_spectrograms, ViewConfig(audio_source=source, video_local_views=3))
        batch = collate([ds[(i, 0, i)] for i in range(len(ds))])
        assert batch["video"].shape == (3, 3, 32, 112, 112) and batch["video"].dtype == torch.uint8
        assert [v.shape for v in batch["video_local"]] == [(3, 3, 8, 96, 96)] * 3
        assert batch["audio"].shape == (3, 1, 80, 448) and batch["audio_local"][0].shape == (3, 1, 80, 112)
        assert -3.5 < batch["audio"].min() and batch["audio"].max() < 5 and torch.isfinite(batch["audio"]).all()
        ready = finish_batch(batch)
        lo = min((0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
        hi = max((1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
        for v in [ready["video"], *ready["video_local"]]:
            assert v.dtype == torch.float32 and lo - 1e-5 <= v.min() and v.max() <= hi + 1e-5
            assert v.std() > 0.1  # real content, not a constant


def test_global_audio_window_starts_at_the_video_t0_to_the_sample(dataset, micro_clips):
    entry = dataset.clips.entry("flipping_a_pancake")  # audio starts 7 ms before the video
    offset = entry["audio"]["start_s"] - entry["video"]["start_s"]
    for seed in range(50):
        win = views.draw_window(
            torch.Generator().manual_seed(seed),
            entry["video"]["frames"],
            entry["audio"]["samples"],
            entry["video"]["start_s"],
            entry["audio"]["start_s"],
        )
        assert win.sample0 == round((win.frame0 / 8 - offset) * 16000)
        assert 0 <= win.frame0 <= entry["video"]["frames"] - 32
        assert 0 <= win.sample0 <= entry["audio"]["samples"] - 64000
    # the dataset's global audio view is the log-mel of exactly that window, times the drawn gain
    wave = torch.from_numpy(read_audio(micro_clips, "flipping_a_pancake"))
    g = torch.Generator().manual_seed(sample_seed(7, 0, 0))
    win = views.draw_window(
        g, entry["video"]["frames"], len(wave), entry["video"]["start_s"], entry["audio"]["start_s"]
    )
    index = dataset.ids.index("flipping_a_pancake")
    got = dataset[(index, 0, 0)]["audio"][0]
    exact = log_mel(wave[win.sample0 : win.sample0 + 64000])
    shift = got - exact  # ln(g^2)/4.41, a constant where mel >> eps
    assert shift.std() < 1e-3 and abs(shift.mean()) <= 2 * math.log(1.1) / 4.410007 + 1e-4
    off_by_one = log_mel(wave[win.sample0 + HOP : win.sample0 + HOP + 64000])
    assert (got - off_by_one).std() > 10 * shift.std()  # a shifted window would not match


def test_augmentation_parameter_statistics():
    g = torch.Generator().manual_seed(0)
    n = 3000
    areas_g = [np.prod(views.rrc_params(g, 112, 149, (0.2, 1.0))[2:]) / (112 * 149) for _ in range(n)]
    areas_l = [np.prod(views.rrc_params(g, 112, 149, (0.08, 0.4))[2:]) / (112 * 149) for _ in range(n)]
    assert 0.19 < min(areas_g) and max(areas_g) <= 1.0 and 0.07 < min(areas_l) and max(areas_l) < 0.42
    # the same distribution as torchvision's RandomResizedCrop rule (which draws from the global RNG)
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    img = torch.zeros(3, 112, 149)
    for scale, ours in (((0.2, 1.0), areas_g), ((0.08, 0.4), areas_l)):
        ref = [np.prod(RandomResizedCrop.get_params(img, scale, (3 / 4, 4 / 3))[2:]) / (112 * 149) for _ in range(n)]
        assert abs(np.mean(ours) - np.mean(ref)) < 0.015 and abs(np.std(ours) - np.std(ref)) < 0.015
    local = [views.draw_photometric(g, grey_p=0.2, blur_p=0.5) for _ in range(n)]
    assert abs(np.mean([p.grey for p in local]) - 0.2) < 0.03
    assert abs(np.mean([p.blur for p in local]) - 0.5) < 0.03
    assert all(p.blur_sigma == (0.1, 2.0) for p in local)  # the official fixed, vertical blur
    glob = [views.draw_photometric(g) for _ in range(n)]
    assert not any(p.grey or p.blur for p in glob)
    b = np.array([p.brightness for p in glob])
    h = np.array([p.hue for p in glob])
    assert 0.6 <= b.min() and b.max() <= 1.4 and -0.2 <= h.min() and h.max() <= 0.2
    assert len({p.order for p in glob}) == 24  # every order of the four jitter ops occurs
    flips = [views.uniform(g, 0, 1) < 0.5 for _ in range(n)]
    assert abs(np.mean(flips) - 0.5) < 0.03


def test_same_seed_same_views_and_workers_do_not_matter(dataset, micro_clips, micro_spectrograms):
    a, b = dataset[(1, 3, 5)], dataset[(1, 3, 5)]
    assert torch.equal(a["video"], b["video"]) and torch.equal(a["audio_local"][0], b["audio_local"][0])
    assert not torch.equal(a["video"], dataset[(1, 3, 6)]["video"])  # another position
    assert not torch.equal(a["video"], dataset[(1, 4, 5)]["video"])  # another epoch
    other = PretrainDataset(micro_clips, micro_spectrograms, ViewConfig(), seed=8)
    assert not torch.equal(a["video"], other[(1, 3, 5)]["video"])  # another seed

    def batches(workers):
        sampler = EpochSampler(len(dataset), num_replicas=1, rank=0, seed=7)
        sampler.set_epoch(2)
        loader = DataLoader(dataset, batch_size=2, sampler=sampler, collate_fn=collate, num_workers=workers)
        return [x["video"] for x in loader]

    assert all(torch.equal(x, y) for x, y in zip(batches(0), batches(2)))


def test_every_index_once_per_epoch_across_ranks_apart_from_padding():
    n, ranks = 10, 3
    per_rank = [list(EpochSampler(n, ranks, r, seed=1)) for r in range(ranks)]
    assert [len(p) for p in per_rank] == [4, 4, 4]  # same number of batches
    keys = [k for p in per_rank for k in p]
    assert sorted(pos for _, _, pos in keys) == list(range(12))  # positions unique
    counts = np.bincount([i for i, _, _ in keys], minlength=n)
    assert counts.min() == 1 and counts.sum() - n == 2  # padding repeats 2 clips
    order = EpochSampler(n, ranks, 0, seed=1).order()
    assert [i for i, c in enumerate(counts) if c == 2] == sorted(order[:2])  # ... the first two of the order
    s = EpochSampler(n, ranks, 1, seed=1)
    s.set_epoch(0, start=2)  # resume mid-epoch
    assert list(s) == per_rank[1][2:] and len(s) == 2
    s.set_epoch(1)
    assert [i for i, _, _ in s] != [i for i, _, _ in per_rank[1]]  # reshuffled each epoch


def test_short_clips_are_padded_and_flagged(micro_clips, micro_spectrograms):
    for source in ("waveform", "spectrogram"):
        ds = PretrainDataset(micro_clips, micro_spectrograms, ViewConfig(audio_source=source))
        index = ds.ids.index("big_buck_bunny_432_433")  # 1.0 s: 8 frames, 16 k samples
        sample = ds[(index, 0, 0)]
        assert sample["padded_video"] and sample["padded_audio"]
        frames = sample["video"].permute(1, 0, 2, 3)
        assert torch.equal(frames[8], frames[31]) and not torch.equal(frames[0], frames[7])  # last frame repeated
        # audio padded with zeros after its end: the log-mel of silence (plus the gain shift when sliced)
        tail = sample["audio"][0, :, 130:]
        assert tail.std() < 1e-4 and abs(tail.mean() - views.SILENCE) < 0.05
        batch = collate([sample, ds[(ds.ids.index("R6llTwEh07w"), 0, 1)]])
        assert batch["padded_video"].tolist() == [True, False] and batch["padded_audio"].tolist() == [True, False]


def test_unreadable_clip_raises_naming_it_or_is_skipped_and_counted(tmp_path, micro_clips, micro_spectrograms):
    import shutil

    broken = tmp_path / "clips"
    shutil.copytree(micro_clips, broken)
    for shard in broken.glob("shard-*.tar"):
        shard.write_bytes(shard.read_bytes()[:2048])  # truncate every shard
    ds = PretrainDataset(broken, None, ViewConfig())
    with pytest.raises(UnreadableClip, match="R6llTwEh07w"):
        ds[(ds.ids.index("R6llTwEh07w"), 0, 0)]
    skip = PretrainDataset(broken, None, ViewConfig(on_unreadable="skip"))
    good = PretrainDataset(micro_clips, None, ViewConfig())
    batch = collate([skip[(0, 0, 0)], good[(1, 0, 1)]])
    assert batch["skipped"] == 1 and batch["video"].shape[0] == 1


def test_eval_windows_are_uniform_with_centre_or_three_crops(micro_clips, micro_spectrograms):
    ev = EvalClips(micro_clips, micro_spectrograms, clips_per_video=3, crops=3)
    item = ev[ev.ids.index("R6llTwEh07w")]  # 81 frames, 160 k samples
    assert item["video"].shape == (9, 3, 32, 112, 112) and item["audio"].shape == (3, 1, 80, 448)
    wins = [views.draw_window(None, 81, 160125, position=p) for p in (0.0, 0.5, 1.0)]
    assert [w.frame0 for w in wins] == [0, 24, 48]  # the audio (10.008 s) bounds the last t0
    assert [w.sample0 for w in wins] == [0, 48000, 96000]
    centre = EvalClips(micro_clips, None, clips_per_video=3, crops=1)[ev.ids.index("R6llTwEh07w")]["video"]
    # window-major order: [w0 left, w0 centre, w0 right, w1 left, ...]; the middle crop is the centre crop
    assert torch.equal(centre[0], item["video"][1]) and torch.equal(centre[1], item["video"][4])
    assert not torch.allclose(item["video"][0], item["video"][2])  # left != right crop


def test_the_dataset_feeds_the_tiny_model(dataset):
    import model

    cfg = model.preset("tiny", variant="xkd")
    net = model.build(cfg)
    batch = finish_batch(collate([dataset[(i, 0, i)] for i in range(2)]))
    losses = net({k: batch[k] for k in ("video", "video_local", "audio", "audio_local")})
    assert torch.isfinite(losses["total"]) and losses["total"] > 0
    losses["total"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.video_student.parameters())


def test_fast_audio_path_differences_are_what_the_readme_says(micro_clips, micro_spectrograms):
    """Slicing the cached log-mel equals recomputing it except in the 4+4 edge frames; the additive
    volume shift is exact except where the mel is near the log floor (silence)."""
    from benchmarks.audio_fidelity import measure

    m = measure(micro_clips, micro_spectrograms, stride=40)
    for n in (64000, 16000):
        assert max(m["interior"][n]) <= 2**-8  # only float16 storage differs inside
        assert max(m["edge"][n]) > 0.1  # the edges really differ (documented)
    for g, d in m["jitter"].items():
        assert d.mean() < 5e-3 and d.max() <= abs(views.volume_shift(g)) + 1e-3


# --- input geometry: defined once, read back from the cache, a foreign cache refused up front -------------


@pytest.fixture(scope="module")
def fps16(tmp_path_factory):
    import view_caches

    return view_caches.fps16(tmp_path_factory)


@pytest.fixture(scope="module")
def late_audio(tmp_path_factory):
    import view_caches

    return view_caches.late_audio(tmp_path_factory)


def test_the_model_input_geometry_is_the_data_geometry():
    import model
    from xkd.data import geometry, logmel

    cfg = model.preset("base")
    assert cfg.video_input == (3, geometry.CLIP_FRAMES, geometry.VIDEO_SIZE, geometry.VIDEO_SIZE)
    assert cfg.video_local == (3, geometry.LOCAL_FRAMES, geometry.LOCAL_SIZE, geometry.LOCAL_SIZE)
    assert cfg.audio_input == (1, logmel.N_MELS, logmel.frames_for(geometry.CLIP_SAMPLES))
    assert cfg.audio_local == (1, logmel.N_MELS, logmel.frames_for(geometry.LOCAL_SAMPLES))
    assert geometry.CLIP_FRAMES == geometry.CLIP_S * geometry.FPS  # 32 frames over 4 s
    assert geometry.CLIP_SAMPLES == geometry.CLIP_S * logmel.SAMPLE_RATE


def test_a_clip_cache_at_another_fps_is_refused_when_the_dataset_is_built(fps16):
    from xkd.errors import UsageError

    for source in ("waveform", "spectrogram"):
        with pytest.raises(UsageError, match=r"(?s)fps16.*16(\.0)? fps.*re-extract with --fps 8"):
            PretrainDataset(fps16["clips"], fps16["spectrograms"], ViewConfig(audio_source=source))


def test_a_cache_at_another_sample_rate_is_refused_when_the_dataset_is_built(tmp_path_factory):
    import view_caches

    from xkd.errors import UsageError

    sr = view_caches.sr22050(tmp_path_factory)
    with pytest.raises(UsageError, match=r"(?s)clips.*22050.*--sample-rate 16000"):
        PretrainDataset(sr["clips"], None, ViewConfig())
    with pytest.raises(UsageError, match=r"(?s)spectrograms.*22050"):
        PretrainDataset(sr["clips"], sr["spectrograms"], ViewConfig(audio_source="spectrogram"))


def test_default_views_are_unchanged_for_a_fixed_seed(micro_clips):
    """The numbers the official-default loader produced before align_local_views was wired in (bit-exact
    draws: the augmentation parameters; content: frame and spectrogram statistics of the drawn windows)."""
    ds = PretrainDataset(micro_clips, None, ViewConfig(video_local_views=2), seed=3)
    s = ds[(ds.ids.index("flipping_a_pancake"), 1, 5)]
    assert s["video_aug"].tolist() == pytest.approx(
        [0.91529, 0.852138, 0.870378, -0.005867, 2, 3, 1, 0, 0, 0, 0.1, 2], abs=1e-6
    )
    assert [a.tolist() for a in s["video_local_aug"]] == [
        pytest.approx([1.164373, 0.976454, 1.142776, 0.160902, 0, 1, 2, 3, 0, 1, 0.1, 2], abs=1e-6),
        pytest.approx([1.169909, 1.166159, 0.963268, -0.142294, 1, 2, 3, 0, 0, 1, 0.1, 2], abs=1e-6),
    ]
    means = s["video"].float().mean((0, 2, 3))[::4].tolist()
    assert means == pytest.approx([127.133, 123.49, 122.394, 121.491, 111.19, 101.053, 109.751, 104.423], abs=0.2)
    assert [v.float().mean().item() for v in s["video_local"]] == pytest.approx([103.136, 99.225], abs=0.2)
    assert (s["audio"].mean().item(), s["audio"].std().item()) == pytest.approx((-0.36045, 0.48221), abs=2e-4)
    local = s["audio_local"][0]
    assert (local.mean().item(), local.std().item()) == pytest.approx((-0.2068, 0.41234), abs=2e-4)


def test_aligned_local_views_start_at_the_same_time(late_audio, monkeypatch):
    """align_local_views: the 1 s audio local view starts where the first 8-frame video local view starts,
    in stream time, on a clip whose audio starts 0.73 s after its video."""
    from xkd.train.config import load_config

    cfg = load_config("tiny", ["model.align_local_views=true"])
    assert (
        ViewConfig.from_config(cfg).align_local_views
        and not ViewConfig.from_config(load_config("tiny")).align_local_views
    )
    ds = PretrainDataset(late_audio["clips"], None, ViewConfig(align_local_views=True, video_local_views=2))
    entry = ds.clips.entry("late_audio")
    assert entry["audio"]["start_s"] - entry["video"]["start_s"] > 0.7
    video = ds.clips.clip("late_audio")[0].permute(0, 3, 1, 2)
    seen = {"windows": [], "parts": [], "audio": []}
    draw, crop, window = views.draw_window, views.resized_crop, views.audio_window

    def spy_draw(*a, **k):
        seen["windows"].append(draw(*a, **k))
        return seen["windows"][-1]

    def spy_crop(frames, *a, **k):
        seen["parts"].append(frames)
        return crop(frames, *a, **k)

    def spy_window(wave, sample0, n):
        seen["audio"].append((sample0, n))
        return window(wave, sample0, n)

    monkeypatch.setattr(views, "draw_window", spy_draw)
    monkeypatch.setattr(views, "resized_crop", spy_crop)
    monkeypatch.setattr(views, "audio_window", spy_window)
    fps, sr = entry["video"]["fps"], entry["audio"]["sample_rate"]
    starts = set()
    for position in range(12):
        for key in seen:
            seen[key].clear()
        ds[(0, 0, position)]
        (win,) = seen["windows"]
        first_local = seen["parts"][1]  # [global, local 1, local 2]
        offset = next(s for s in range(25) if torch.equal(first_local, video[win.frame0 + s : win.frame0 + s + 8]))
        (local_sample0,) = [s0 for s0, n in seen["audio"] if n == views.LOCAL_SAMPLES]
        video_t = entry["video"]["start_s"] + (win.frame0 + offset) / fps
        audio_t = entry["audio"]["start_s"] + local_sample0 / sr
        assert abs(video_t - audio_t) <= 1 / sr
        starts.add(offset)
    assert len(starts) > 3  # the local start is still drawn, now shared by both modalities


def test_resized_crop_is_the_plain_crop_resize_flip_in_the_model_layout(dataset):
    """The loader's fast path (interleaved frames, one numpy copy) gives exactly the pixels of the plain torch
    ops (crop, antialiased bilinear resize, mirror) on a real clip, as a contiguous [3, T, S, S]."""
    import torch.nn.functional as F

    frames = dataset.clips.clip(dataset.ids[0], frames=slice(0, 32))[0]
    assert frames.shape[1:] == (112, 149, 3) and frames.is_contiguous()
    planar = frames.permute(0, 3, 1, 2).contiguous()  # [T, 3, H, W]
    cases = (((3, 10, 100, 120), 112, True), ((20, 40, 50, 61), 96, False), ((0, 0, 112, 149), 64, True))
    for box, size, flip in cases:
        top, left, h, w = box
        want = F.interpolate(
            planar[:, :, top : top + h, left : left + w].contiguous(),
            size=(size, size),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        want = (want.flip(-1) if flip else want).permute(1, 0, 2, 3)
        got = views.resized_crop(frames.permute(0, 3, 1, 2), box, size, flip)
        assert got.shape == (3, 32, size, size) and got.is_contiguous() and torch.equal(got, want)
