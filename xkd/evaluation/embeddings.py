"""Embeddings of media files with a frozen encoder bundle (`components.embed`): the evaluation's test views
(`xkd.evaluation.views.EvalViews`: uniformly spaced windows of the encoder's geometry x crops, video and audio
windows aligned) through the bundle's encoders (`xkd.evaluation.features.FeatureSource`: mean patch token after
the final LayerNorm), one float32 [views, D] array per file and modality.

The files are decoded into a clip cache and a spectrogram cache first (`components.extract_clips` /
`components.cache_spectrograms`, so the bounds, timeouts and reject codes are theirs); each file's status per
modality comes from those caches: `ok`, or the cache's reject code with its reason.
"""

from __future__ import annotations

from pathlib import Path

from xkd.data.logmel import N_MELS
from xkd.errors import UsageError

MODALITIES = ("video", "audio")
# a file no modality could use is one reject; its code is the most telling one (not "no_video" when the
# real trouble is an audio stream that does not decode)
_MISSING_STREAM = ("no_video", "no_audio")


def encoder_files(bundle: Path, role: str) -> dict[str, Path]:
    """{modality: encoder file} of `role` the bundle holds."""
    files = {m: Path(bundle) / f"{m}_{role}.safetensors" for m in MODALITIES}
    files = {m: f for m, f in files.items() if f.is_file()}
    if not files:
        raise UsageError(f"{bundle} holds no {role} encoder (video_{role}.safetensors / audio_{role}.safetensors)")
    return files


def bundle_geometry(bundle: Path, files: dict[str, Path]):
    """The views the bundle's encoders take (`xkd.evaluation.views.encoder_geometry`: its training config), checked
    against each encoder file's own input size; a bundle whose files disagree with its config is refused."""
    import model as xkd_model
    from xkd.evaluation.views import encoder_geometry

    try:
        geom = encoder_geometry(bundle)
    except (xkd_model.ConfigError, ValueError) as err:
        raise UsageError(f"{bundle}/config.json: {err}") from None
    want = {
        "video": (3, geom.clip_frames, geom.size, geom.size),
        "audio": (1, N_MELS, geom.clip_spec_frames),
    }
    for modality, path in files.items():
        shape = tuple(xkd_model.read_metadata(path)["input_size"])
        if shape != want[modality]:
            raise UsageError(
                f"{path}: its encoder takes {shape}, not the {modality} views of the bundle's geometry {want[modality]}"
            )
    return geom


def statuses(jobs, caches: dict[str, Path | None]) -> dict[str, dict[str, dict]]:
    """{source: {modality: {"status": "ok"} or {"status": code, "reason"}}} from each modality's cache."""
    from xkd.data.cache_build import read_manifest, read_report

    out: dict[str, dict[str, dict]] = {j.source: {} for j in jobs}
    for modality, cache in caches.items():
        if cache is None:
            continue
        ok = {e["source"] for e in read_manifest(cache)}
        rejected = {r["path"]: r for r in read_report(cache).get("rejected", [])}
        for j in jobs:
            r = rejected.get(j.source)
            if j.source in ok:
                out[j.source][modality] = {"status": "ok"}
            elif r is not None:
                out[j.source][modality] = {"status": r["code"], "reason": r["reason"]}
    return out


def file_reject(per_modality: dict[str, dict]) -> dict | None:
    """None when some modality of the file is embedded, else its reject {code, reason}."""
    if any(s["status"] == "ok" for s in per_modality.values()):
        return None
    rows = sorted(per_modality.values(), key=lambda s: s["status"] in _MISSING_STREAM)
    return {"code": rows[0]["status"], "reason": rows[0].get("reason", "")} if rows else None


def embed(
    jobs,
    bundle: Path,
    role: str,
    caches: dict[str, Path | None],
    vs,
    out_dir: Path,
    geom,
    *,
    device: str = "cpu",
    batch: int = 16,
) -> dict[tuple[str, str], tuple[Path, tuple[int, ...]]]:
    """Embed every cached file into `out_dir/<clip_id>.<modality>.npy`: {(source, modality): (path, shape)}."""
    import os

    import numpy as np
    import torch

    from xkd.evaluation.features import FeatureSource
    from xkd.evaluation.views import EvalViews
    from xkd.log import progress

    views = EvalViews(caches.get("video"), caches.get("audio"), geometry=geom)
    readers = {"video": views.clips, "audio": views.specs}
    source = FeatureSource("encoder", bundle, role)
    modalities = [m for m in MODALITIES if readers[m] is not None]
    for m in modalities:
        source.encoder(m).to(device)  # loaded verified (model.load_encoder), moved once
    done = {}
    for job in progress(jobs, desc="embed", unit="file"):
        for m in modalities:
            entry = readers[m].entries.get(job.clip_id)
            if entry is None or (m == "video" and not entry.get("video")):
                continue
            x = views.views(job.clip_id, m, vs)  # test views: no generator, no augmentation
            feats = torch.cat([source(m, x[i : i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])
            path = out_dir / f"{job.clip_id}.{m}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp.npy")
            np.save(tmp, feats.numpy())
            os.replace(tmp, path)  # a killed run never leaves half an array under the final name
            done[(job.source, m)] = (path, tuple(feats.shape))
    return done
