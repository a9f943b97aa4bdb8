"""`xkd.train.engine.train_step` on its own: the tiny model, real sample clips (views from the pretraining
dataset), one optimiser step at a time."""

from __future__ import annotations

import pytest
import torch

import model as xkd_model
from model.encoder import patchify
from xkd.data.photometric import finish_batch
from xkd.data.pretrain_dataset import PretrainDataset, ViewConfig, collate
from xkd.train.engine import LOSS_TERMS, train_step

SEED = 1234
HP = dict(lr=5e-4, weight_decay=0.05, ema_momentum=0.99)


def build(**overrides):
    """The tiny XKD model, its AdamW, with fixed initial weights."""
    cfg = xkd_model.preset("tiny", "xkd", **overrides)
    torch.manual_seed(SEED)
    net = xkd_model.build(cfg)
    return net, xkd_model.build_optimizer(net, cfg.lr, cfg.weight_decay, cfg.betas, cfg.decay_pos_tokens)


@pytest.fixture(scope="module")
def samples(micro_clips) -> list[dict]:
    """Two real clips' views (video global + local, audio global + local), as the loader yields them."""
    cfg = xkd_model.preset("tiny", "xkd")
    views = ViewConfig(video_local_views=cfg.video_local_views, audio_local_views=cfg.audio_local_views)
    data = PretrainDataset(str(micro_clips), None, views, seed=SEED)
    assert len(data) >= 2
    return [data[(i, 0, i)] for i in range(2)]


def batch_of(samples: list[dict]) -> dict:
    return finish_batch(collate(samples))


def half(value, i: int):
    """Sample i of a batch value (a tensor or a list of per-view tensors); other values pass through."""
    if isinstance(value, torch.Tensor):
        return value[i : i + 1]
    if isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
        return [v[i : i + 1] for v in value]
    return value


def state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def grads_at_step(opt: torch.optim.Optimizer, net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The gradients the optimiser sees when it steps (after accumulation and clipping)."""
    seen: dict[str, torch.Tensor] = {}
    names = {id(p): n for n, p in net.named_parameters()}

    def hook(optimizer, args, kwargs):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    seen[names[id(p)]] = p.grad.detach().clone()

    opt.register_step_pre_hook(hook)
    return seen


def test_one_step_moves_the_students_and_the_teachers_follow_the_ema_closed_form(samples):
    net, opt = build()
    before = state(net)
    out = train_step(net, opt, [batch_of(samples)], clip_grad=0.3, **HP)

    assert set(out.terms) == set(LOSS_TERMS)
    assert all(torch.isfinite(torch.tensor(v)) for v in out.terms.values()) and out.grad_norm > 0
    after = state(net)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    students = [k for k in trainable if k.startswith(("video_student.", "audio_student."))]
    assert len(students) > 50
    moved = [k for k in students if not torch.equal(after[k], before[k])]
    assert len(moved) == len(students), sorted(set(students) - set(moved))[:5]
    teachers = dict(net.video_teacher.named_parameters(prefix="video_teacher"))
    teachers.update(net.audio_teacher.named_parameters(prefix="audio_teacher"))
    m = HP["ema_momentum"]
    for key in teachers:
        student = after[key.replace("_teacher.", "_student.", 1)]
        expected = m * before[key] + (1 - m) * student
        assert torch.allclose(after[key], expected, rtol=0, atol=1e-7), key
    qkv = "video_teacher.encoder.blocks.0.attn.qkv.weight"
    assert not torch.equal(after[qkv], before[qkv])
    assert all(p.grad is None for p in net.parameters())  # ready for the next step's accumulation


def test_each_student_gradient_is_clipped_to_the_threshold_and_the_decoders_are_not(samples):
    net, opt = build()
    seen = grads_at_step(opt, net)
    clip = 1e-3
    out = train_step(net, opt, [batch_of(samples)], clip_grad=clip, **HP)

    clipped = {id(p) for p in net.student_parameters_for_clipping()}
    names = {n for n, p in net.named_parameters() if id(p) in clipped}
    student_norms = [seen[n].norm().item() for n in names if n in seen]
    assert len(student_norms) == len(names)
    assert max(student_norms) <= clip * (1 + 1e-4)
    assert out.grad_norm > 10 * clip  # the pre-clip norm: clipping really acted
    decoder_norms = [g.norm().item() for n, g in seen.items() if "decoder" in n]
    assert decoder_norms and max(decoder_norms) > 10 * clip  # official clips only the student encoders/heads


def test_two_micro_batches_of_one_accumulate_to_one_batch_of_two(samples):
    # per-sample losses only: MMD and the DINO centring couple the samples of a batch, so they are
    # switched off here; the masks are pinned by explicit noise so both runs mask the same tokens
    overrides = dict(weight_da=0.0, weight_kd=0.0)
    whole = batch_of(samples)
    net, _ = build(**overrides)
    for kind, enc in (("video", net.video_student.encoder), ("audio", net.audio_student.encoder)):
        n = patchify(whole[kind], enc.patch_embed.patch).shape[1]
        whole[f"{kind}_noise"] = torch.rand(2, n, generator=torch.Generator().manual_seed(7))
    halves = [{k: half(v, i) for k, v in whole.items()} for i in range(2)]

    results = []
    for micro_batches in ([whole], halves):
        net, opt = build(**overrides)
        seen = grads_at_step(opt, net)
        out = train_step(net, opt, micro_batches, clip_grad=1e9, **HP)
        results.append((out, seen, state(net)))
    (one, grads_one, _), (acc, grads_acc, _) = results

    for term in ("rec_v", "rec_a", "rec", "total"):
        assert acc.terms[term] == pytest.approx(one.terms[term], rel=1e-5), term
    assert grads_one.keys() == grads_acc.keys() and len(grads_one) > 50
    for name, g in grads_one.items():
        assert torch.allclose(grads_acc[name], g, rtol=1e-3, atol=1e-7), name
    assert acc.grad_norm == pytest.approx(one.grad_norm, rel=1e-4)


def test_a_non_finite_loss_raises_naming_the_term_and_leaves_the_weights(samples):
    # a zero teacher temperature makes the video-teacher -> audio-student distillation term non-finite
    net, opt = build(video_teacher_temp=0.0, video_warmup_teacher_temp=0.0)
    before = state(net)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 5: .*kd_vt2as") as err:
        train_step(net, opt, [batch_of(samples)], clip_grad=0.3, step=5, **HP)
    assert "rec_v" not in str(err.value).split("(")[0]  # only the non-finite terms are named
    assert not opt.state  # the optimiser never stepped
    after = state(net)
    assert all(torch.equal(after[k], before[k]) for k in before if "center" not in k)


def test_micro_batch_count_must_match_accumulate(samples):
    net, opt = build()
    with pytest.raises(ValueError, match="1 micro-batches for accumulate=2"):
        train_step(net, opt, iter([batch_of(samples)]), accumulate=2, clip_grad=0.3, **HP)
