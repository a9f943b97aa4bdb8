"""Official-checkpoint converter (against the recorded official key layout) and encoder bundles."""

from __future__ import annotations

import pytest
import torch

from model import build, export_bundle, load_encoder, load_state, preset, read_metadata, save_encoder
from model.bundle import BundleError
from model.convert_official import ConvertError, convert, main, to_official_state_dict
from model.xkd import XKD


def synthetic_official(rows, seed=0):
    """A state dict laid out exactly as the official one: every key, shape, and alias as one tensor."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for r in rows:
        if not r["alias_of"]:
            shape = [int(s) for s in r["shape"].split("x")]
            sd[r["key"]] = torch.randn(shape, generator=g)
    for r in rows:
        if r["alias_of"]:
            sd[r["key"]] = sd[r["alias_of"]]
    return sd


def test_converter_reads_the_official_layout_and_round_trips(official_keys, tmp_path):
    sd = synthetic_official(official_keys)
    ckpt = tmp_path / "checkpoint.pth.tar"
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {"state": {}}, "epoch": 7}, ckpt)
    files = convert(ckpt, tmp_path / "out")
    names = {f.name for f in files}
    assert {"model.safetensors", "config.json", "video_student.safetensors", "audio_teacher.safetensors"} <= names
    model = load_state(XKD(preset("tiny"), init=False), tmp_path / "out" / "model.safetensors")
    back = to_official_state_dict(model)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    enc = load_encoder(tmp_path / "out" / "audio_teacher.safetensors")
    assert torch.equal(enc.pos_embed, sd["aud_teacher.backbone.enc_pos_embed"])
    assert torch.equal(enc.blocks[1].mlp.fc2.weight, sd["aud_teacher.backbone.encoder.blocks.1.mlp.fc2.weight"])
    assert enc.bundle_meta["role"] == "teacher" and enc.bundle_meta["preset"] == "tiny"


@pytest.mark.parametrize("variant", ["xkd", "mas", "mats"])
def test_our_model_survives_official_layout_round_trip(tmp_path, variant):
    torch.manual_seed(0)
    model = build(preset("tiny", variant))
    torch.save({"model": to_official_state_dict(model), "epoch": 1}, tmp_path / "ck.pth.tar")
    convert(tmp_path / "ck.pth.tar", tmp_path / "out")  # variant detected from the shared storage
    cfg = preset("tiny", variant)
    again = load_state(XKD(cfg, init=False), tmp_path / "out" / "model.safetensors")
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in again.state_dict().items())
    assert (again.video_student.encoder.blocks is again.audio_student.encoder.blocks) == (variant != "xkd")
    assert '"variant": "%s"' % variant in (tmp_path / "out" / "config.json").read_text()


def test_backbone_only_file(official_keys, tmp_path):
    sd = synthetic_official(official_keys)
    prefix = "vid_student.backbone."
    backbone = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    torch.save(backbone, tmp_path / "xkd_ep800_vid_student.pth.tar")
    (out,) = convert(tmp_path / "xkd_ep800_vid_student.pth.tar", tmp_path / "out")
    assert out.name == "video_student.safetensors"
    enc = load_encoder(out)
    assert torch.equal(enc.patch_embed.proj.weight, backbone["cuboid_embed.proj.weight"])
    assert torch.equal(enc.norm.bias, backbone["encoder_norm.bias"])
    assert enc(torch.randn(1, 3, 8, 96, 96)).shape == (1, 73, 64)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda sd: sd.update({"vid_student.backbone.extra": torch.zeros(1)}), "unknown key"),
        (lambda sd: sd.pop("aud_ae.mask_token"), "missing key"),
        (lambda sd: sd.update({"vid_ae.out_proj.bias": torch.zeros(5)}), "shape mismatch"),
        (lambda sd: sd.update({"vid_student.head.mlp.4.weight": torch.zeros(128)}), "aliased keys"),
    ],
)
def test_converter_refuses_wrong_keys_and_shapes(official_keys, tmp_path, damage, message, capsys):
    sd = synthetic_official(official_keys)
    damage(sd)
    torch.save({"model": sd}, tmp_path / "bad.pth.tar")
    with pytest.raises(ConvertError, match=message):
        convert(tmp_path / "bad.pth.tar", tmp_path / "out")
    assert main(["--input", str(tmp_path / "bad.pth.tar"), "--output", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


class NotAllowed:  # an arbitrary class: weights_only loading must refuse to unpickle it
    pass


def test_converter_never_unpickles_arbitrary_objects(tmp_path):
    torch.save({"model": NotAllowed()}, tmp_path / "evil.pth.tar")
    with pytest.raises(ConvertError, match="weights-only"):
        convert(tmp_path / "evil.pth.tar", tmp_path / "out")


def test_bundle_round_trip_and_metadata(tmp_path):
    torch.manual_seed(0)
    model = build(preset("tiny", "mats"))
    files = export_bundle(model, tmp_path / "final")
    assert (tmp_path / "final" / "config.json").exists()
    for key, path in files.items():
        meta = read_metadata(path)
        modality, role = key.split("_")
        assert (meta["modality"], meta["role"], meta["variant"], meta["preset"]) == (modality, role, "mats", "tiny")
        assert (meta["width"], meta["depth"], meta["heads"]) == (64, 2, 4)
        assert meta["patch_size"] == ([4, 16, 16] if modality == "video" else [4, 16])
        assert meta["input_size"] == ([3, 32, 112, 112] if modality == "video" else [1, 80, 448])
        enc = load_encoder(path)
        src = getattr(model, key).encoder
        x = torch.randn(2, *src.cfg.input_size)
        assert torch.equal(enc.features(x), src.features(x))
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(BundleError):
        load_encoder(tmp_path / "junk.safetensors")
    with pytest.raises(BundleError, match="role"):
        save_encoder(model.video_student.encoder, tmp_path / "x.safetensors", role="both")
