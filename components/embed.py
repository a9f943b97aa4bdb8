"""Embeddings of video/audio files with the trained encoder, no code needed.

    python -m components.embed --model models:/xkd-encoder@champion --input FILE_OR_FOLDER --output DIR
    python -m components.embed --model outputs/select/bundle --input clip.mp4 --output DIR [--role teacher]
        [--clips 3] [--crops 1] [--device auto] [--workers N] [--timeout 600] [--min-duration 1] [--max-duration 600]

--model is a registered version (models:/NAME@ALIAS or models:/NAME/VERSION, from MLFLOW_TRACKING_URI, default
the project's mlflow.db) or an encoder bundle directory. --input is a folder (searched recursively), a text file
of paths, or one media file. Each file is decoded as extract_clips / cache_spectrograms do (same bounds,
timeouts and reject codes; the decoded caches stay in DIR/cache/, so a re-run only decodes new or changed
files), cut into the evaluation's test views (--clips uniformly spaced 4 s windows x --crops crops; video and
audio windows cover the same seconds) and passed through the bundle's video and/or audio encoder of --role.

Output: DIR/embeddings/<clip id>.<video|audio>.npy, float32 [views, D] (the mean over views is the file's
embedding); DIR/index.csv and DIR/index.json, one row per file and modality (file, clip_id, modality, status
= ok or the reject code, shape, path, reason); DIR/report.json (inputs, ok, rejected with code and reason;
inputs == ok + rejected). A file is a reject only when no modality could be embedded. Exit status 1 when no
file could be embedded.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sys
from pathlib import Path

from xkd.data.media import MAX_DURATION_S
from xkd.errors import UsageError, cli, step_parser
from xkd.log import logger

log = logger(__name__)
ROLES = ("auto", "student", "teacher")


def _role(role: str, bundle: Path, tags: dict) -> str:
    """`auto`: the role selection picked (the version's `role` tag, or selection.json beside the bundle)."""
    if role != "auto":
        return role
    picked = tags.get("role")
    marker = bundle.parent / "selection.json"
    if picked is None and marker.is_file():
        picked = json.loads(marker.read_text()).get("role")
    return picked if picked in ROLES[1:] else "student"


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        raise UsageError(f"--device {device} is not usable here ({' '.join(str(err).split())[:160]})") from None
    return device


def run(
    model: str,
    input: str,
    output: str,
    *,
    role: str = "auto",
    clips: int = 3,
    crops: int = 1,
    device: str = "auto",
    workers: int = 1,
    timeout_s: float = 600.0,
    min_duration: float = 1.0,
    max_duration: float = MAX_DURATION_S,
    batch: int = 16,
) -> dict:
    """Embed every media file under `input` with `model`; return the report (also DIR/report.json)."""
    from components import cache_spectrograms, extract_clips
    from xkd.data.cache_build import check_step_args
    from xkd.data.inputs import media_jobs
    from xkd.data.media import check_max_duration, require_ffmpeg
    from xkd.evaluation import embeddings
    from xkd.evaluation.views import ViewSettings
    from xkd.tracking.model_source import resolve_bundle

    require_ffmpeg()
    if role not in ROLES:
        raise UsageError(f"--role must be one of {', '.join(ROLES)} (got {role!r})")
    if clips < 1 or crops not in (1, 3) or batch < 1:
        raise UsageError(f"--clips and --batch must be at least 1 and --crops 1 or 3 (got {clips}, {batch}, {crops})")
    check_step_args(workers=workers, min_duration=min_duration, timeout_s=timeout_s)
    check_max_duration(max_duration)
    jobs, ignored = media_jobs(input)
    if not jobs:
        raise UsageError(f"--input {input}: no media file found ({len(ignored)} other files ignored)")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {output} is a file; give a directory")
    if model.startswith("models:/"):  # an earlier run's download (perhaps of another version) is not reused
        shutil.rmtree(out / "model", ignore_errors=True)
    bundle, tags = resolve_bundle(model, out / "model")
    role = _role(role, bundle, tags)
    files = embeddings.encoder_files(bundle, role)
    geom = embeddings.bundle_geometry(bundle, files)
    size = geom.size
    device = _device(device)
    log.info(f"model {model} -> {bundle} ({role}: {', '.join(files)}), {len(jobs)} input(s), device {device}")

    common = dict(workers=workers, timeout_s=timeout_s, min_duration=min_duration, max_duration=max_duration)
    caches = {"video": None, "audio": None}
    if "video" in files:
        caches["video"] = out / "cache" / "clips"
        extract_clips.run(input, str(caches["video"]), short_side=size, **common)
    if "audio" in files:
        caches["audio"] = out / "cache" / "spectrograms"
        cache_spectrograms.run(str(caches["audio"]), input=input, **common)
    duplicate_of = {}
    for cache in caches.values():
        if cache is not None:
            report = json.loads((cache / "report.json").read_text())
            duplicate_of = {d["path"]: d["same_as"] for d in report.get("duplicate_sources", [])}
    unique = [j for j in jobs if j.source not in duplicate_of]

    status = embeddings.statuses(unique, caches)
    vs = ViewSettings(test_clips=clips, test_crops=crops, size=size)
    done = embeddings.embed(unique, bundle, role, caches, vs, out / "embeddings", geom, device=device, batch=batch)
    rows, rejected = [], []
    for j in unique:
        for m in files:
            s = status[j.source].get(m, {"status": "decode_error", "reason": "not in the decoded cache"})
            path, shape = done.get((j.source, m), (None, None))
            if s["status"] == "ok" and path is None:  # cached but no views could be cut: never silently dropped
                s = {"status": "decode_error", "reason": f"no {m} view could be made"}
            if path is None:
                (out / "embeddings" / f"{j.clip_id}.{m}.npy").unlink(missing_ok=True)  # an earlier run's array
            rows.append(
                {
                    "file": j.source,
                    "clip_id": j.clip_id,
                    "modality": m,
                    "status": s["status"],
                    "shape": list(shape) if shape else None,
                    "path": str(path.relative_to(out)) if path else None,
                    "reason": s.get("reason", ""),
                }
            )
        reject = embeddings.file_reject({r["modality"]: r for r in rows if r["file"] == j.source})
        if reject is not None:
            rejected.append({"path": j.source, **reject})
    codes: dict[str, int] = {}
    for r in rejected:
        codes[r["code"]] = codes.get(r["code"], 0) + 1
    report = {
        "inputs": len(unique),
        "ok": len(unique) - len(rejected),
        "rejected": rejected,
        "rejected_by_code": codes,
        "duplicate_inputs": len(duplicate_of),
        "duplicate_sources": [{"path": p, "same_as": s} for p, s in duplicate_of.items()],
        "ignored_non_media": ignored,
        "model": model,
        "bundle": str(bundle),
        "role": role,
        "views": {"clips": clips, "crops": crops, "size": size, "seconds": geom.clip_s},
    }
    _write_outputs(out, rows, report)
    return report


def _write_outputs(out: Path, rows: list[dict], report: dict) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "shape": "x".join(map(str, r["shape"])) if r["shape"] else ""})
    for name, content in (
        ("index.csv", text.getvalue()),
        ("index.json", json.dumps(rows, indent=1) + "\n"),
        ("report.json", json.dumps(report, indent=2) + "\n"),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(content)
        os.replace(tmp, out / name)


def parser() -> argparse.ArgumentParser:
    ap = step_parser("components.embed", __doc__)
    ap.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, or a bundle directory")
    ap.add_argument("--input", required=True, help="folder (recursive), text file of paths, or a media file")
    ap.add_argument("--output", required=True, help="output directory (embeddings/, index.csv/json, report.json)")
    ap.add_argument("--role", default="auto", choices=ROLES, help="encoder role; auto = the one selection picked")
    ap.add_argument("--clips", type=int, default=3, help="uniformly spaced 4 s windows per file")
    ap.add_argument("--crops", type=int, default=1, choices=(1, 3), help="video crops per window")
    ap.add_argument("--device", default="auto", help="torch device; auto = cuda when available, else cpu")
    ap.add_argument("--batch", type=int, default=16, help="views per forward pass")
    ap.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1), help="decoding processes")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per ffmpeg call")
    ap.add_argument("--min-duration", type=float, default=1.0, help="seconds; shorter files are rejected")
    ap.add_argument(
        "--max-duration", type=float, default=MAX_DURATION_S, help="seconds decoded per file at most (its first ones)"
    )
    return ap


@cli
def main(argv: list[str] | None = None) -> int:
    from xkd.data.cache_build import summarize

    args = parser().parse_args(argv)
    report = run(
        args.model,
        args.input,
        args.output,
        role=args.role,
        clips=args.clips,
        crops=args.crops,
        device=args.device,
        workers=args.workers,
        timeout_s=args.timeout,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        batch=args.batch,
    )
    return summarize(report, args.output)


if __name__ == "__main__":
    sys.exit(main())
