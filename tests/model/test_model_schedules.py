"""Schedules against every value recorded from the official cosine_scheduler."""

from __future__ import annotations

import numpy as np
import pytest

from model import schedules
from model.config import preset
from model.xkd import build


@pytest.mark.parametrize("name", ["ema_cosine", "lr_cosine_warmup", "wd_const"])
def test_cosine_schedule_matches_every_official_value(official, name):
    _, j = official
    values = schedules.cosine_schedule(**j[f"schedule.{name}.kwargs"])
    assert values.tolist() == j[f"schedule.{name}.values"]  # bit-identical


def test_named_schedules_and_scalar_momentum(official):
    _, j = official
    kw = j["schedule.ema_cosine.kwargs"]
    ema = schedules.ema_schedule(kw["epochs"], kw["niter_per_ep"])
    assert ema.tolist() == j["schedule.ema_cosine.values"]
    total = kw["epochs"] * kw["niter_per_ep"]
    scalar = [schedules.ema_momentum(k, total) for k in range(total)]
    assert np.allclose(scalar, j["schedule.ema_cosine.values"], rtol=0, atol=1e-15)
    kw = j["schedule.lr_cosine_warmup.kwargs"]
    lr = schedules.lr_schedule(kw["base_value"], kw["epochs"], kw["niter_per_ep"], kw["warmup_epochs"])
    assert lr.tolist() == j["schedule.lr_cosine_warmup.values"]
    assert lr[4] == lr[5] == kw["base_value"]  # warm-up includes its endpoint
    assert lr[-1] > 0.0  # cosine stops one step short of the final value


def test_mas_teacher_temperature_warmup():
    sched = schedules.teacher_temperature_schedule(0.09, 0.11, 30, 800)
    assert len(sched) == 800 and sched[0] == 0.09 and sched[29] == pytest.approx(0.11) and sched[30] == 0.11
    assert np.all(np.diff(sched[:30]) > 0)
    for epoch in (0, 7, 29, 30, 799):
        assert schedules.teacher_temperature(epoch, 0.09, 0.11, 30, 800) == sched[epoch]
    mas = build(preset("base", "mas"), device="meta")
    assert mas.teacher_temperatures(0) == (0.09, 0.04)
    assert mas.teacher_temperatures(30) == (0.11, 0.06)
    for variant in ("xkd", "mats"):  # constant 0.1 / 0.07 (MATS keeps XKD's, docs/xkd_spec.md §9)
        m = build(preset("base", variant), device="meta")
        assert m.teacher_temperatures(0) == m.teacher_temperatures(100) == (0.1, 0.07)
