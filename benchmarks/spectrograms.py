"""Log-mel front end throughput: ours (torchaudio) against the official librosa front end, same run,
same real waveforms (ESC-10 clips), equal numbers checked.

    python -m benchmarks.spectrograms [--clips 200]

Both single-threaded (per core). "Front end" = waveform -> normalised log-mel [80, T]; decoding the
audio is common to both and excluded. Target: ours >= 3x.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import librosa
import numpy as np
import torch

from xkd.data.logmel import HOP, LOG_EPS, N_FFT, N_MELS, NORM_MEAN, NORM_STD, SAMPLE_RATE, log_mel


def librosa_front_end(wave: np.ndarray) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=wave,
        sr=SAMPLE_RATE,
        n_fft=N_FFT,
        hop_length=HOP,
        win_length=N_FFT,
        window="hann",
        center=True,
        pad_mode="reflect",
        power=2.0,
        n_mels=N_MELS,
        fmin=0.0,
        fmax=SAMPLE_RATE / 2,
        htk=False,
        norm="slaney",
    )
    return (np.log(mel + LOG_EPS) - NORM_MEAN) / NORM_STD


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", default="data/samples/esc10/audio")
    ap.add_argument("--clips", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    files = sorted(Path(args.input).glob("*.ogg"))[: args.clips]
    waves = [librosa.load(f, sr=SAMPLE_RATE, mono=True)[0] for f in files]
    librosa_front_end(waves[0]), log_mel(waves[0])  # warm-up (librosa/numba caches, torch kernels)

    t = time.perf_counter()
    ours = [log_mel(w).numpy() for w in waves]
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = [librosa_front_end(w) for w in waves]
    t_ref = time.perf_counter() - t

    worst = max(float(np.linalg.norm(a - b) / np.linalg.norm(b)) for a, b in zip(ours, ref))
    seconds = sum(len(w) for w in waves) / SAMPLE_RATE
    print(f"clips: {len(waves)} ({seconds:.0f} s of real ESC-10 audio), 1 thread")
    print(f"ours (torchaudio): {len(waves) / t_ours:8.1f} clips/s  {seconds / t_ours:8.0f} audio-s/s")
    print(f"librosa (official): {len(waves) / t_ref:7.1f} clips/s  {seconds / t_ref:8.0f} audio-s/s")
    print(f"speed-up ours/librosa: {t_ref / t_ours:.2f}x   worst relative Frobenius difference: {worst:.2e}")


if __name__ == "__main__":
    main()
