"""The assembled model (tiny preset): loss terms, determinism, gradients, EMA, sharing, optimiser helpers."""

from __future__ import annotations

import pytest
import torch

from model import build, param_groups, preset
from model.config import ConfigError, from_dict
from model.optim import build_optimizer, clip_grad_per_tensor_
from model.summary import parameter_counts

OFFICIAL_BASE = {
    "xkd": (396_374_336, 206_346_560),
    "mas": (311_347_520, 121_319_744),
    "mats": (226_320_704, 121_319_744),
}


@pytest.mark.parametrize("variant", ["xkd", "mas", "mats"])
def test_base_parameter_counts_equal_the_official_model(variant):
    c = parameter_counts("base", variant)  # meta device: nothing is allocated
    assert (c["video_encoder"], c["audio_encoder"], c["video_decoder"], c["audio_decoder"], c["head"]) == (
        87_691_008,
        85_509_888,
        8_722_560,
        7_628_992,
        8_405_248,
    )
    assert c["head_trainable"] == 8_397_056
    assert (c["total"], c["trainable"]) == OFFICIAL_BASE[variant]


def _model(variant="xkd", seed=0, **kw):
    torch.manual_seed(seed)
    return build(preset("tiny", variant, **kw))


@pytest.fixture(scope="module")
def xkd_out(make_batch):
    model = _model()
    batch = make_batch(model.cfg)
    out = model(batch, generator=torch.Generator().manual_seed(0))
    out["total"].backward()
    return model, batch, out


def test_forward_returns_the_named_terms_and_their_weighting(xkd_out):
    _, _, out = xkd_out
    assert set(out) == {
        "rec_v",
        "rec_a",
        "rec",
        "kd_vt2as",
        "kd_at2vs",
        "kd",
        "mmd_student",
        "mmd_teacher",
        "da",
        "total",
    }
    assert all(torch.isfinite(v) and v.ndim == 0 for v in out.values())
    assert torch.allclose(out["rec"], (out["rec_v"] + out["rec_a"]) / 2)
    assert torch.allclose(out["kd"], (out["kd_vt2as"] + out["kd_at2vs"]) / 2)
    assert torch.allclose(out["da"], (out["mmd_student"] + out["mmd_teacher"]) / 2)
    assert torch.allclose(out["total"], (out["da"] + out["kd"] + 5 * out["rec"]) / 7)
    assert not out["mmd_teacher"].requires_grad and out["mmd_student"].requires_grad


def test_gradients_reach_exactly_the_trainable_parameters(xkd_out):
    model, _, _ = xkd_out
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    teachers = {id(p) for p in model.teacher_parameters()}
    assert not trainable & teachers
    head = model.video_student.head
    assert not head.last_layer.weight_g.requires_grad and head.mlp[1] is head.mlp[4]


def test_centres_are_buffers_that_move(xkd_out):
    model, _, _ = xkd_out
    state = model.state_dict()
    assert "vt2as.center" in state and "at2vs.center" in state
    assert state["vt2as.center"].abs().sum() > 0  # updated by the forward pass (started at zero)


def test_same_seed_same_numbers_and_noise_reproduces_masks(make_batch):
    outs = []
    for _ in range(2):
        model = _model(seed=3)
        outs.append(model(make_batch(model.cfg, seed=4), generator=torch.Generator().manual_seed(5)))
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    model = _model(seed=3)
    batch = make_batch(model.cfg, seed=4)
    g = torch.Generator().manual_seed(9)
    batch.update(video_noise=torch.rand(2, 392, generator=g), audio_noise=torch.rand(2, 560, generator=g))
    a = model(batch)["rec"]
    b = _model(seed=3)(batch)["rec"]
    assert torch.equal(a, b)


def test_teachers_start_equal_and_ema_moves_only_teachers():
    model = _model()
    for s, t in ((model.video_student, model.video_teacher), (model.audio_student, model.audio_teacher)):
        assert all(torch.equal(a, b) for a, b in zip(s.parameters(), t.parameters()))
    with torch.no_grad():
        for p in model.video_student.parameters():
            p.add_(1.0)
    students = {k: v.clone() for k, v in model.state_dict().items() if "teacher" not in k}
    before = [p.clone() for p in model.video_teacher.parameters()]
    model.update_teachers(0.9)
    for b, t, s in zip(before, model.video_teacher.parameters(), model.video_student.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * s, atol=1e-6)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in students.items())  # students, decoders
    snapshot = [p.clone() for p in model.teacher_parameters()]
    model.update_teachers(1.0)
    assert all(torch.equal(a, b) for a, b in zip(snapshot, model.teacher_parameters()))


@pytest.mark.parametrize(
    "variant,students,teachers", [("xkd", False, False), ("mas", True, False), ("mats", True, True)]
)
def test_variants_share_exactly_the_blocks(variant, students, teachers):
    m = build(preset("tiny", variant), device="meta")
    vs, as_, vt, at = (
        m.video_student.encoder,
        m.audio_student.encoder,
        m.video_teacher.encoder,
        m.audio_teacher.encoder,
    )
    assert (vs.blocks is as_.blocks) is students and (vt.blocks is at.blocks) is teachers
    assert vs.blocks is not vt.blocks
    for a, b in ((vs, as_), (vt, at)):  # never shared: embeddings, CLS, pos, final norm
        assert a.patch_embed is not b.patch_embed and a.norm is not b.norm and a.pos_embed is not b.pos_embed
    assert m.video_student.head is not m.audio_student.head and m.video_decoder is not m.audio_decoder
    assert m.cfg.video_local_views == (1 if variant == "xkd" else 3)


@pytest.mark.parametrize("double", [True, False])
def test_mats_double_ema_flag(double):
    model = _model("mats", mats_double_ema=double)
    blk = model.video_teacher.encoder.blocks[0].attn.qkv.weight
    with torch.no_grad():
        model.video_student.encoder.blocks[0].attn.qkv.weight.add_(1.0)
    t0, s = blk.clone(), model.video_student.encoder.blocks[0].attn.qkv.weight.clone()
    model.update_teachers(0.9, 0.8)
    once = 0.9 * t0 + 0.1 * s
    expect = 0.8 * once + 0.2 * s if double else once
    assert torch.allclose(blk, expect, atol=1e-6)


@pytest.mark.parametrize("variant", ["mas", "mats"])
def test_mas_mats_forward_backward(variant, make_batch):
    model = _model(variant)
    out = model(make_batch(model.cfg), generator=torch.Generator().manual_seed(0))
    out["total"].backward()
    shared = model.video_student.encoder.blocks[0].attn.qkv.weight
    assert shared.grad is not None and torch.isfinite(out["total"])


TERMS = ("rec_v", "rec_a", "kd_vt2as", "kd_at2vs", "mmd_student", "mmd_teacher")


@pytest.fixture(scope="module")
def base_terms(make_batch):
    return _model()(make_batch(preset("tiny")), generator=torch.Generator().manual_seed(0))


def _changed(out, base) -> set[str]:
    # same seeds, same machine: an untouched term is bit-identical, so exact equality is the right test
    return {k for k in TERMS if not torch.equal(out[k], base[k])}


@pytest.mark.parametrize(
    "overrides,changed",
    [
        # the teacher sees other inputs / pools its tokens differently: every teacher-side term moves,
        # the students' reconstruction and their own MMD do not
        (dict(teacher_input="global"), {"kd_vt2as", "kd_at2vs", "mmd_teacher"}),
        (dict(refine_mode="none"), {"kd_vt2as", "kd_at2vs", "mmd_teacher"}),
        # only the a->v student's temperature: the v->a direction keeps the audio student temperature
        (dict(at2vs_student_temp="video", video_student_temp=0.2), {"kd_at2vs"}),
        # official quirk: video_student_temp alone is never read (at2vs uses the audio temperature)
        (dict(video_student_temp=0.2), set()),
        # no term moves: only how L_da is assembled
        (dict(teacher_mmd="drop"), set()),
    ],
)
def test_official_flags_change_exactly_their_terms(overrides, changed, base_terms, make_batch):
    out = _model(**overrides)(make_batch(preset("tiny")), generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in out.values())
    assert _changed(out, base_terms) == changed
    assert torch.allclose(out["rec"], (out["rec_v"] + out["rec_a"]) / 2)
    assert torch.allclose(out["kd"], (out["kd_vt2as"] + out["kd_at2vs"]) / 2)
    if overrides.get("teacher_mmd") == "drop":
        assert torch.equal(out["da"], out["mmd_student"]) and not torch.equal(out["da"], base_terms["da"])
        assert torch.allclose(out["total"], (out["da"] + out["kd"] + 5 * out["rec"]) / 7)
    else:
        assert torch.allclose(out["da"], (out["mmd_student"] + out["mmd_teacher"]) / 2)


def test_teacher_mmd_drop_doubles_the_student_mmd_gradient(make_batch):
    # official L_da = (student + no-grad teacher) / 2 halves the student MMD's gradient; "drop" does not
    grads = {}
    for mode in ("logged", "drop"):
        model = _model(teacher_mmd=mode)
        out = model(make_batch(model.cfg), generator=torch.Generator().manual_seed(0))
        out["da"].backward()
        grads[mode] = model.video_student.head.mlp[0].weight.grad.clone()
        assert model.video_decoder.mask_token.grad is None  # L_da never reaches the decoders
    assert torch.allclose(grads["drop"], 2 * grads["logged"], rtol=1e-5, atol=1e-12)


def test_mmd_distance_flag_switches_both_mmds_to_the_direct_form(make_batch, monkeypatch):
    from model import losses

    forms = []
    real = losses.mmd
    monkeypatch.setattr(losses, "mmd", lambda *a, **k: forms.append(a[3]) or real(*a, **k))
    base = _model()(make_batch(preset("tiny")), generator=torch.Generator().manual_seed(0))
    out = _model(mmd_distance="direct")(make_batch(preset("tiny")), generator=torch.Generator().manual_seed(0))
    assert forms == ["expanded", "expanded", "direct", "direct"]  # teacher then student MMD, per forward
    assert _changed(out, base) <= {"mmd_student", "mmd_teacher"}  # nothing outside L_da moves
    # the two forms differ only by float32 round-off on the kernel diagonal (see test_model_losses)
    for k in ("mmd_student", "mmd_teacher"):
        assert abs(float(out[k]) - float(base[k])) <= 0.05 * float(out[k]), k


def test_bf16_autocast_forward(make_batch):
    model = _model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(make_batch(model.cfg), generator=torch.Generator().manual_seed(0))
    out["total"].backward()
    assert torch.isfinite(out["total"])


def test_param_groups_follow_the_official_rule(official_keys):
    from model.convert_official import model_key_to_official

    model = build(preset("tiny"), device="meta")
    groups = param_groups(model, 0.3)
    assert [g["weight_decay"] for g in groups] == [0.0, 0.3]
    group_of = {id(p): i for i, g in enumerate(groups) for p in g["params"]}
    official = {r["key"]: r["optimizer_group"] for r in official_keys}
    checked = 0
    for name, p in model.named_parameters():
        want = official[model_key_to_official(name)[0]]
        assert str(group_of[id(p)]) == want if p.requires_grad else want == "-", name
        checked += 1
    assert checked > 100
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    no_tok = param_groups(model, 0.3, decay_pos_tokens=False)
    assert any(p is model.video_student.encoder.pos_embed for p in no_tok[0]["params"])
    assert any(p is model.video_decoder.mask_token for p in no_tok[0]["params"])


def test_per_tensor_clipping_and_optimizer_step(xkd_out):
    model, _, _ = xkd_out
    params = model.student_parameters_for_clipping()
    assert all(id(p) not in {id(q) for q in model.video_decoder.parameters()} for p in params)
    grads = [p.grad.clone() for p in params]
    norms = clip_grad_per_tensor_(params, 0.3)
    for g0, p, n in zip(grads, params, norms):
        assert torch.allclose(n, g0.norm())
        if n > 0.3:
            assert p.grad.norm() == pytest.approx(0.3, rel=1e-4)
        else:
            assert torch.equal(p.grad, g0)
    opt = build_optimizer(model)
    before = model.video_decoder.mask_token.clone()
    opt.step()
    assert not torch.equal(before, model.video_decoder.mask_token)


def test_config_errors_name_the_bad_key():
    with pytest.raises(ConfigError, match="'widht'"):
        preset("tiny", widht=3)
    with pytest.raises(ConfigError, match="teacher_input"):
        preset("tiny", teacher_input="both")
    with pytest.raises(ConfigError, match="variant"):
        preset("tiny", "xyz")
    cfg = preset("tiny", "mas", teacher_input="global")
    assert from_dict(cfg.to_dict()) == cfg
    with pytest.raises(Exception):
        cfg.width = 3  # frozen
