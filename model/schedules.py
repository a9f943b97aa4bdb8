"""Schedules as pure functions (official `cosine_scheduler` and the DINO teacher-temperature warm-up).

All per-iteration schedules are arrays indexed by the global step `epoch * niter_per_ep + it`.
numpy is used on purpose: the values then equal the official ones bit for bit (same linspace/cos).
"""

from __future__ import annotations

import math

import numpy as np


def cosine_schedule(
    base_value: float,
    final_value: float,
    epochs: int,
    niter_per_ep: int,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """Linear warm-up (endpoint included, so `base_value` appears twice) then a cosine from `base_value`
    that stops one step short of `final_value`. Length epochs * niter_per_ep."""
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_epochs > 0 else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warmup, cosine))


def lr_schedule(
    base_lr: float,
    epochs: int,
    niter_per_ep: int,
    warmup_epochs: int = 30,
    final_lr: float = 0.0,
    start_warmup_lr: float = 0.0,
) -> np.ndarray:
    """Per-iteration LR: linear warm-up from 0 over 30 epochs, cosine to 0 at the end (no batch scaling)."""
    return cosine_schedule(base_lr, final_lr, epochs, niter_per_ep, warmup_epochs, start_warmup_lr)


def ema_schedule(epochs: int, niter_per_ep: int, base: float = 0.997, final: float = 1.0) -> np.ndarray:
    """Per-iteration teacher momentum m_k = 1 - 0.003 (1 + cos(pi k / K)) / 2, no warm-up."""
    return cosine_schedule(base, final, epochs, niter_per_ep)


def ema_momentum(step: int, total_steps: int, base: float = 0.997, final: float = 1.0) -> float:
    """One value of `ema_schedule` without building the array."""
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * step / total_steps))


def teacher_temperature_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """Per-epoch teacher temperature: linspace(warmup_temp, temp, warmup_epochs), then constant.
    MAS warms video 0.09 -> 0.11 and audio 0.04 -> 0.06 over 30 epochs; XKD/MATS are constant."""
    return np.concatenate((np.linspace(warmup_temp, temp, warmup_epochs), np.ones(epochs - warmup_epochs) * temp))


def teacher_temperature(epoch: int, warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> float:
    """One epoch's value of `teacher_temperature_schedule` (the temperature changes per epoch, not step)."""
    if epoch >= warmup_epochs:
        return float(temp)
    return float(np.linspace(warmup_temp, temp, warmup_epochs)[epoch])
