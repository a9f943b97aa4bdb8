"""Batched photometric ops equal torchvision's per-image ops, clip by clip, in each clip's own order."""

import torch
import torchvision.transforms.v2.functional as TF

from xkd.data import photometric
from xkd.data.views import Photometric

TV_OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def reference(clip_u8: torch.Tensor, p: Photometric) -> torch.Tensor:
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
        assert torch.allclose(out, reference(clip, p), atol=2e-5), p


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
