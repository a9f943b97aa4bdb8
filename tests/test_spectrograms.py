"""The torchaudio front end equals the official librosa one on real audio; the cache round-trips."""

import librosa
import numpy as np
import pytest
import torch
from sample_data import ESC

from xkd.data.cache import open_cache, read_audio, read_spectrogram
from xkd.data.cache_build import read_manifest, read_report
from xkd.data.logmel import HOP, LOG_EPS, NORM_MEAN, NORM_STD, frames_for, log_mel


def librosa_log_mel(wave: np.ndarray) -> np.ndarray:
    """The official front end (librosa; reflect padding was librosa 0.8's default, passed explicitly)."""
    stft = librosa.stft(
        wave, n_fft=1024, hop_length=143, win_length=1024, window="hann", center=True, pad_mode="reflect"
    )
    mel_basis = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=80, fmin=0.0, fmax=8000.0, htk=False, norm="slaney")
    mel = mel_basis @ (np.abs(stft) ** 2)
    return (np.log(mel + LOG_EPS) - NORM_MEAN) / NORM_STD


def rel_fro(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_four_seconds_give_80_by_448():
    assert frames_for(64000) == 448 and frames_for(16000) == 112
    assert tuple(log_mel(torch.zeros(64000)).shape) == (80, 448)
    assert tuple(log_mel(torch.zeros(2, 16000)).shape) == (2, 80, 112)


def test_matches_librosa_on_real_video_audio(micro_clips):
    reader = open_cache(micro_clips)
    checked = 0
    for cid, entry in reader.entries.items():
        if entry["audio"] is None:
            continue
        wave = read_audio(micro_clips, cid)
        ours, ref = log_mel(wave).numpy(), librosa_log_mel(wave)
        assert ours.shape == ref.shape == (80, frames_for(len(wave)))
        assert rel_fro(ours, ref) <= 1e-4, cid
        checked += 1
    assert checked == 3


def test_matches_librosa_on_real_esc10_audio():
    for name in ("1-100032-A-0.ogg", "1-17150-A-12.ogg", "1-172649-A-40.ogg"):
        wave, sr = librosa.load(ESC / "audio" / name, sr=16000, mono=True)
        assert rel_fro(log_mel(wave).numpy(), librosa_log_mel(wave)) <= 1e-4, name


def test_cached_clip_spectrograms_round_trip(micro_clips, micro_spectrograms):
    report = read_report(micro_spectrograms)
    assert report["inputs"] == 4 == report["ok"] + len(report["rejected"])
    assert [r["code"] for r in report["rejected"]] == ["no_audio"]  # the UCF clip has no audio stream
    for entry in read_manifest(micro_spectrograms):
        cid = entry["clip_id"]
        cached = read_spectrogram(micro_spectrograms, cid)
        exact = log_mel(read_audio(micro_clips, cid)).numpy()
        assert cached.dtype == np.float32 and cached.shape == exact.shape == (80, entry["spectrogram"]["frames"])
        # float16 storage: half an ulp at |x| < 8 is <= 2**-8 = 3.9e-3
        err = np.abs(cached - exact)
        assert err.max() <= 2**-8 and err.max() <= np.abs(exact).max() * 2**-11 + 1e-7
        assert entry["spectrogram"]["dtype"] == "float16" and entry["spectrogram"]["hop"] == HOP


def test_esc10_audio_files_are_cached(micro_esc_spectrograms):
    report = read_report(micro_esc_spectrograms)
    assert report["inputs"] == 20 == report["ok"]
    for entry in read_manifest(micro_esc_spectrograms):
        spec = read_spectrogram(micro_esc_spectrograms, entry["clip_id"])
        assert spec.shape == (80, 1 + entry["audio"]["samples"] // HOP)
        assert abs(entry["audio"]["samples"] / 16000 - entry["duration_s"]) < 0.05
        assert np.isfinite(spec).all() and -5 < spec.mean() < 5


def test_spectrogram_cli_needs_one_source(tmp_path):
    from components.cache_spectrograms import run
    from xkd.errors import UsageError

    with pytest.raises(UsageError, match="exactly one of --clips"):
        run(str(tmp_path / "o"))
    with pytest.raises(UsageError, match="is not a clip cache"):
        run(str(tmp_path / "o"), clips=str(tmp_path))


def test_a_clip_cache_at_another_sample_rate_is_refused_before_any_work(tmp_path_factory, tmp_path):
    import view_caches

    from components.cache_spectrograms import run as cache_spectrograms
    from xkd.errors import UsageError

    sr = view_caches.sr22050(tmp_path_factory)
    with pytest.raises(UsageError, match=r"holds audio at 22050 Hz.*re-extract with --sample-rate 16000"):
        cache_spectrograms(str(tmp_path / "spectrograms"), clips=str(sr["clips"]))
    assert not (tmp_path / "spectrograms").exists()
