"""Batched photometric ops equal torchvision's per-image ops, clip by clip, in each clip's own order; and the
faster implementation of issue 17 equals the one it replaced (kept below as the reference) on real and
adversarial frames, to float rounding."""

import itertools
import threading

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from xkd.data import photometric, views
from xkd.data.photometric import BLUR_KERNEL, GREY_WEIGHTS, IMAGENET_MEAN, IMAGENET_STD
from xkd.data.pretrain_dataset import PretrainDataset, ViewConfig, collate
from xkd.data.views import Photometric

TV_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
# After ImageNet normalisation (values up to ~2.6); measured: ~6e-6 on real clips, float32 rounding.
MAX_ABS_DIFF = 1e-4


# --- reference: xkd/data/photometric.py before issue 17 (last changed in 49d0a6f), unchanged but for the names ---
# The benchmark (benchmarks/photometric.py) times it against the current code.


def ref_grey(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, ...] -> [N, 1, ...] luma."""
    w = x.new_tensor(GREY_WEIGHTS).view(1, 3, *([1] * (x.dim() - 2)))
    return (x * w).sum(1, keepdim=True)


def _ref_per_sample(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return f.view(-1, *([1] * (x.dim() - 1)))


def ref_brightness(x, f):
    return (x * _ref_per_sample(f, x)).clamp_(0, 1)


def ref_contrast(x, f):
    mean = ref_grey(x).mean(dim=(-2, -1), keepdim=True)  # per frame, as PIL/torchvision per image
    f = _ref_per_sample(f, x)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def ref_saturation(x, f):
    f = _ref_per_sample(f, x)
    return (f * x + (1 - f) * ref_grey(x)).clamp_(0, 1)


def _ref_rgb_to_hsv(x):
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return h, s, maxc


def _ref_hsv_to_rgb(h, s, v):
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = torch.stack([torch.stack(c) for c in ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))])
    idx = i.unsqueeze(0).unsqueeze(0).expand(3, 1, *i.shape)
    return table.gather(1, idx).squeeze(1).movedim(0, 1)


def ref_hue(x, f):
    h, s, v = _ref_rgb_to_hsv(x)
    h = (h + _ref_per_sample(f, h)) % 1.0
    return _ref_hsv_to_rgb(h, s, v).clamp_(0, 1)


REF_OPS = (ref_brightness, ref_contrast, ref_saturation, ref_hue)  # index = position in the parameter vector


def _ref_gaussian_1d(sigma: float, device, dtype) -> torch.Tensor:
    half = (BLUR_KERNEL - 1) / 2
    x = torch.linspace(-half, half, BLUR_KERNEL, device=device, dtype=dtype)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


def ref_blur(x: torch.Tensor, sigma_x: float, sigma_y: float) -> torch.Tensor:
    """Separable Gaussian blur (kernel 9, reflect padding) of [N, 3, T, H, W]."""
    n, c, t, h, w = x.shape
    planes = x.reshape(n * c * t, 1, h, w)
    pad = BLUR_KERNEL // 2
    kx = _ref_gaussian_1d(sigma_x, x.device, x.dtype).view(1, 1, 1, -1)
    ky = _ref_gaussian_1d(sigma_y, x.device, x.dtype).view(1, 1, -1, 1)
    planes = F.conv2d(F.pad(planes, (pad, pad, 0, 0), mode="reflect"), kx)
    planes = F.conv2d(F.pad(planes, (0, 0, pad, pad), mode="reflect"), ky)
    return planes.reshape(n, c, t, h, w)


def reference_apply(video: torch.Tensor, params: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """uint8 [B, 3, T, H, W] + params [B, 12] -> float32 views (normalised unless normalize=False)."""
    x = video.float().div_(255.0)
    params = params.to(x.device, torch.float32)
    factors, order = params[:, :4], params[:, 4:8].long()
    for pos in range(4):
        for op, fn in enumerate(REF_OPS):
            idx = (order[:, pos] == op).nonzero().flatten()
            if idx.numel():
                x[idx] = fn(x[idx], factors[idx, op])
    gidx = (params[:, 8] > 0.5).nonzero().flatten()
    if gidx.numel():
        x[gidx] = ref_grey(x[gidx]).expand(-1, 3, *x.shape[2:])
    bidx = (params[:, 9] > 0.5).nonzero().flatten()
    if bidx.numel():
        sigmas = params[bidx, 10:12]
        for pair in torch.unique(sigmas, dim=0):  # one group for the official fixed sigma
            sel = bidx[(sigmas == pair).all(1)]
            x[sel] = ref_blur(x[sel], float(pair[0]), float(pair[1]))
    if normalize:
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
        x = (x - mean) / std
    return x


# --- end of the reference ---


def torchvision_per_frame(clip_u8: torch.Tensor, p: Photometric) -> torch.Tensor:
    """torchvision, one frame at a time: [3, T, H, W] uint8 -> float in [0, 1]."""
    frames = clip_u8.permute(1, 0, 2, 3).float() / 255
    out = []
    for f in frames:
        for op in p.order:
            f = TV_OPS[op](f, (p.brightness, p.contrast, p.saturation, p.hue)[op])
        if p.grey:
            f = TF.rgb_to_grayscale(f, num_output_channels=3)
        if p.blur:
            f = TF.gaussian_blur(f, kernel_size=[9, 9], sigma=list(p.blur_sigma))
        out.append(f)
    return torch.stack(out).permute(1, 0, 2, 3)


def max_diff_to_reference(video: torch.Tensor, params: torch.Tensor, normalize: bool = True) -> float:
    got = photometric.apply(video, params, normalize=normalize)
    want = reference_apply(video, params, normalize=normalize)
    assert got.shape == want.shape and got.dtype == want.dtype == torch.float32
    return float((got - want).abs().max())


def test_matches_torchvision_per_clip():
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (4, 3, 2, 24, 20), generator=g, dtype=torch.uint8)
    params = [
        Photometric(1.3, 0.7, 1.2, 0.15, (3, 1, 0, 2), False, False, (0.1, 2.0)),
        Photometric(0.8, 1.4, 0.6, -0.2, (0, 1, 2, 3), True, False, (0.1, 2.0)),
        Photometric(1.0, 1.1, 1.3, 0.05, (2, 3, 1, 0), False, True, (0.1, 2.0)),
        Photometric(0.9, 0.9, 0.9, -0.1, (1, 0, 3, 2), True, True, (0.7, 0.7)),
    ]
    got = photometric.apply(clips, torch.stack([p.as_tensor() for p in params]), normalize=False)
    for clip, p, out in zip(clips, params, got):
        assert torch.allclose(out, torchvision_per_frame(clip, p), atol=2e-5), p


def test_normalisation_and_device_batch():
    clips = torch.full((1, 3, 1, 4, 4), 255, dtype=torch.uint8)
    ident = Photometric(1.0, 1.0, 1.0, 0.0, (0, 1, 2, 3), False, False, (0.1, 2.0)).as_tensor()[None]
    out = photometric.apply(clips, ident)
    expected = torch.tensor([(1 - m) / s for m, s in zip(photometric.IMAGENET_MEAN, photometric.IMAGENET_STD)])
    assert torch.allclose(out[0, :, 0, 0, 0], expected, atol=1e-6)
    batch = {
        "video": clips,
        "video_aug": ident,
        "audio": torch.zeros(1, 1, 80, 448),
        "padded_video": torch.tensor([False]),
    }
    done = photometric.finish_batch(batch)
    assert set(done) == {"video", "audio", "padded_video"} and torch.equal(done["video"], out)


def _draws(seed: int, n: int, **kw) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([views.draw_photometric(g, **kw).as_tensor() for _ in range(n)])


@pytest.fixture(scope="module")
def real_batches(micro_clips, micro_spectrograms):
    """Collated pretraining batches of the real sample clips (global + 3 local views), two epochs."""
    ds = PretrainDataset(micro_clips, micro_spectrograms, ViewConfig(video_local_views=3), seed=3)
    return [collate([ds[(i, epoch, epoch * len(ds) + i)] for i in range(len(ds))]) for epoch in range(2)]


def test_equals_the_reference_on_real_clips_with_their_drawn_parameters(real_batches):
    for batch in real_batches:
        assert max_diff_to_reference(batch["video"], batch["video_aug"]) < MAX_ABS_DIFF
        for video, aug in zip(batch["video_local"], batch["video_local_aug"]):
            assert max_diff_to_reference(video, aug) < MAX_ABS_DIFF
        assert photometric.finish_batch(batch)["video"].shape == batch["video"].shape


@pytest.mark.parametrize(
    "draw",
    [
        {"grey_p": 1.0, "blur_p": 1.0},  # RandomGray then the official fixed blur (sigma_x 0.1, sigma_y 2.0)
        {"grey_p": 0.0, "blur_p": 1.0, "blur_sigma": "sampled"},  # DINO-style isotropic sigma in [0.1, 2.0]
        {"jitter": (0.9, 0.9, 0.9, 0.5)},  # wider than official: brightness/contrast to ~0, any hue
    ],
)
def test_equals_the_reference_on_real_clips_for_grey_blur_and_wide_jitter(real_batches, draw):
    for seed, batch in enumerate(real_batches):
        video, local = batch["video"], batch["video_local"][0]
        for normalize in (True, False):
            assert max_diff_to_reference(video, _draws(seed, len(video), **draw), normalize) < MAX_ABS_DIFF
            assert max_diff_to_reference(local, _draws(seed + 10, len(local), **draw), normalize) < MAX_ABS_DIFF


def _adversarial_frames() -> torch.Tensor:
    """[1, 3, 4, 16, 16] uint8: greys (max = min), two-way ties for the largest and the smallest channel,
    pure primaries/secondaries, near-greys one level apart, 0 and 255 everywhere, and random pixels."""
    levels = torch.tensor([0, 1, 2, 127, 128, 254, 255])
    special = [list(c) for c in itertools.product(levels.tolist(), repeat=3)]  # 343 colours incl. all ties
    g = torch.Generator().manual_seed(5)
    rand = torch.randint(0, 256, (4 * 16 * 16 - len(special), 3), generator=g).tolist()
    pixels = torch.tensor(special + rand, dtype=torch.uint8)  # [1024, 3]
    pixels = pixels[torch.randperm(len(pixels), generator=g)]
    return pixels.T.reshape(1, 3, 4, 16, 16).contiguous()


def test_equals_the_reference_on_adversarial_colours_every_order_and_hue_edges():
    frames = _adversarial_frames()
    hues = (-0.5, -0.2, -1 / 6, -1e-7, 0.0, 1e-7, 1 / 12, 1 / 6, 0.2, 1 / 3, 0.5)
    params = []
    for order, hue_f in itertools.product(itertools.permutations(range(4)), hues):
        for b, c, s in ((1.4, 0.6, 1.4), (0.6, 1.4, 0.6), (1.0, 1.0, 1.0), (0.0, 2.0, 0.0)):
            params.append(Photometric(b, c, s, hue_f, order, False, False, (0.1, 2.0)).as_tensor())
    params = torch.stack(params)
    video = frames.expand(len(params), -1, -1, -1, -1).contiguous()
    assert max_diff_to_reference(video, params, normalize=False) < 1e-5  # in [0, 1], before normalisation


def test_chunking_over_frames_does_not_change_the_result(real_batches, monkeypatch):
    batch = real_batches[0]
    params = _draws(1, len(batch["video"]), grey_p=0.5, blur_p=1.0, blur_sigma="sampled")  # blur along both axes
    whole = photometric.apply(batch["video"], params)
    monkeypatch.setattr(photometric, "CPU_CHUNK_FRAMES", 3)  # 32 frames = 10 chunks of 3 and one of 2
    assert torch.equal(photometric.apply(batch["video"], params), whole)
    assert max_diff_to_reference(batch["video"], params) < MAX_ABS_DIFF


def test_threads_do_not_share_scratch_buffers(real_batches):
    """The scratch planes are per thread: two loader threads at once give the single-thread results."""
    batch = real_batches[1]
    params = [_draws(seed, len(batch["video"])) for seed in (21, 22)]
    want = [photometric.apply(batch["video"], p) for p in params]
    got = [None, None]

    def work(k: int) -> None:
        for _ in range(3):
            got[k] = photometric.apply(batch["video"], params[k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(a, b) for a, b in zip(got, want))
