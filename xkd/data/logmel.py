"""The official XKD audio front end (docs/xkd_spec.md §1.3), in torchaudio.

16 kHz mono -> STFT (n_fft 1024, win 1024, hop 143, periodic Hann, centred, reflect padding) -> power
-> 80 Slaney-scale mels 0-8000 Hz with Slaney norm -> ln(mel + float32 eps) -> (x + 5.3688107) / 4.410007.
Hop 143 makes 4 s (64 000 samples) exactly 1 + 64000 // 143 = 448 frames.
"""

from __future__ import annotations

import functools

import numpy as np

# torch/torchaudio are imported where they are used: the constants below are read by step CLIs whose --help
# must not pay for loading torch.

SAMPLE_RATE = 16000
N_FFT = 1024
HOP = 143
N_MELS = 80
LOG_EPS = float(np.finfo(np.float32).eps)  # 1.1920929e-07, what the official code adds before the log
NORM_MEAN = -5.3688107  # Kinetics statistics, reused for every downstream audio set
NORM_STD = 4.410007


@functools.lru_cache(maxsize=4)
def _mel(device: str = "cpu"):
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=SAMPLE_RATE,
        n_fft=N_FFT,
        win_length=N_FFT,
        hop_length=HOP,
        f_min=0.0,
        f_max=SAMPLE_RATE / 2,
        n_mels=N_MELS,
        power=2.0,
        center=True,
        pad_mode="reflect",
        norm="slaney",
        mel_scale="slaney",
    ).to(device)


def frames_for(samples: int) -> int:
    """Spectrogram frames a waveform of `samples` gives (centred STFT)."""
    return 1 + samples // HOP


def log_mel(waveform):
    """Normalised log-mel [..., 80, frames] (float32 torch tensor) of float waveform(s) [..., n] at 16 kHz
    (a torch tensor or a numpy array)."""
    import torch

    wave = torch.as_tensor(waveform, dtype=torch.float32)
    with torch.no_grad():
        mel = _mel(str(wave.device))(wave)
    return (torch.log(mel + LOG_EPS) - NORM_MEAN) / NORM_STD
