"""Sharded extraction: split an input list into N partitions, then merge the N partition caches into one.

    python -m components.merge_caches partition --input PATH --parts N --out DIR    # DIR/part-000.txt ...
    python -m components.extract_clips --input DIR/part-001.txt --output CACHE/part-001   # one per pod
    python -m components.merge_caches merge --output CACHE CACHE/part-000 CACHE/part-001 ...
    python -m components.merge_caches estimate [--clips 240000] [--seconds 10] [--speed S | --measure]

Partitioning is deterministic and nearly stable: files are ordered by a hash of their path relative to the
input root and cut into N contiguous, equal runs, so sizes differ by at most one and adding a few files
moves at most ~N others to another partition (each partition cache stays incremental on re-runs).

Merging keeps the shards where they are and points at them: the merged manifest's `shard` is the path
relative to the merged directory (e.g. `part-001/shard-000000.tar`), which `xkd.data.cache` readers
resolve unchanged. Moving ~150 GB (K400) would cost a full copy on most PVCs and would destroy each
partition's incremental state; referencing costs nothing, so partitions must sit inside (or beside) the
merged directory. Clip ids are recomputed over the union of sources (the same rule as one run over all
inputs), because a partition holding only files of one sub-folder would otherwise shorten its ids.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from xkd.data.cache_build import MANIFEST, REPORT, read_manifest, read_report
from xkd.data.inputs import clip_ids, discover
from xkd.data.shards import shard_files
from xkd.errors import UsageError, cli, step_parser


def _key(source: str, path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return source


def partition(keys: list[str], parts: int) -> list[list[int]]:
    """Indices of `keys` per partition: hash order, cut into `parts` contiguous runs (sizes differ by <= 1)."""
    if parts < 1:
        raise UsageError(f"--parts must be >= 1, not {parts}")
    order = sorted(range(len(keys)), key=lambda i: (hashlib.sha1(keys[i].encode()).hexdigest(), keys[i]))
    base, extra = divmod(len(keys), parts)
    out, start = [], 0
    for p in range(parts):
        size = base + (1 if p < extra else 0)
        out.append(sorted(order[start : start + size]))
        start += size
    return out


def write_partitions(input: str, parts: int, out_dir: str | os.PathLike) -> list[Path]:
    """Write `part-NNN.txt` list files (absolute paths, one per line) for components.extract_clips /
    cache_spectrograms `--input`. Non-media files of a folder scan are left out, as a single run does."""
    items, _ignored = discover(input)
    root = Path(input) if Path(input).is_dir() else None
    keys = [_key(s, p, root) for s, p in items]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for n, idx in enumerate(partition(keys, parts)):
        f = out / f"part-{n:03d}.txt"
        f.write_text("".join(f"{items[i][1].resolve()}\n" for i in idx))
        files.append(f)
    return files


def merge(output: str | os.PathLike, partitions: list[str | os.PathLike]) -> dict:
    """Merge partition cache dirs into `output`/manifest.jsonl + report.json; returns the merged report."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    entries, rejected, parts_info = [], [], []
    params = None
    for part in map(Path, partitions):
        report = read_report(part)
        if not (part / MANIFEST).is_file() or not report:
            raise UsageError(f"{part} is not a finished cache (no {MANIFEST}/{REPORT}); run its extraction first")
        if params is not None and report.get("params_digest") != params[1]:
            raise UsageError(f"{part} was built with other parameters than {params[0]}; re-run it with the same ones")
        params = params or (part, report.get("params_digest"), report.get("params"))
        rel = Path(os.path.relpath(part.resolve(), output.resolve())).as_posix()
        for e in read_manifest(part):
            entries.append({**e, "shard": f"{rel}/{e['shard']}"})
        rejected += [{**r, "partition": rel} for r in report["rejected"]]
        parts_info.append(
            {
                "dir": rel,
                "inputs": report["inputs"],
                "ok": report["ok"],
                "rejected": len(report["rejected"]),
                "shards": [p.name for p in shard_files(part)],
            }
        )
    # Overlap is one input in two partitions (clip_ids would give the second copy an id of its own).
    seen: dict[str, str] = {}
    for e in entries:
        key = os.path.abspath(e["source"])
        if key in seen:
            raise UsageError(
                f"clip {e['clip_id']!r} is in two partitions ({seen[key]}, {e['shard']}); partitions must not overlap"
            )
        seen[key] = e["shard"]
    ids = clip_ids([Path(e["source"]) for e in entries] + [Path(r["path"]) for r in rejected])
    for e, cid in zip(entries, ids):
        if e["clip_id"] != cid:
            e["partition_clip_id"] = e["clip_id"]  # the member names inside the shard keep this one
            e["clip_id"] = cid
    entries.sort(key=lambda e: e["clip_id"])
    codes: dict[str, int] = {}
    for r in rejected:
        codes[r["code"]] = codes.get(r["code"], 0) + 1
    shard_bytes = sum((output / e).stat().st_size for e in {x["shard"] for x in entries})
    media_s = sum(e.get("duration_s") or 0.0 for e in entries)
    merged = {
        "inputs": sum(p["inputs"] for p in parts_info),
        "ok": len(entries),
        "rejected": rejected,
        "rejected_by_code": codes,
        "params": params[2],
        "params_digest": params[1],
        "partitions": parts_info,
        "shard_bytes": shard_bytes,
        "media_seconds": round(media_s, 3),
        "bytes_per_media_second": round(shard_bytes / media_s, 1) if media_s else None,
    }
    if merged["inputs"] != merged["ok"] + len(rejected):
        raise UsageError(
            f"partition reports do not add up: inputs {merged['inputs']} != ok {merged['ok']} + "
            f"rejected {len(rejected)}"
        )
    for name, text in (
        (MANIFEST, "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)),
        (REPORT, json.dumps(merged, indent=2, sort_keys=True) + "\n"),
    ):
        tmp = output / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(output / name)  # atomic: readers never see half a manifest
    return merged


def pod_hours(
    clips: int = 240_000, seconds_per_clip: float = 10.0, media_s_per_s_per_core: float = 30.0, cores_per_pod: int = 1
) -> float:
    """Pod-hours to extract `clips` x `seconds_per_clip` of media at the measured per-core speed
    (extraction is one ffmpeg process per file, so it scales with cores; I/O is assumed not to bind)."""
    return clips * seconds_per_clip / (media_s_per_s_per_core * cores_per_pod) / 3600.0


def measure_speed(input: str = "data/samples/av") -> float:
    """Media-seconds extracted per second on one core (one worker), on `input` - what benchmarks.extraction
    measures, in one repeat."""
    import tempfile

    from components.extract_clips import run

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        report = run(input, str(Path(tmp) / "cache"), workers=1)
        return report["media_seconds"] / (time.perf_counter() - t)


def parser() -> argparse.ArgumentParser:
    ap = step_parser("components.merge_caches", __doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("partition", help="write N partition list files", formatter_class=ap.formatter_class)
    p.add_argument("--input", required=True, help="folder, text file of paths or media file to partition")
    p.add_argument("--parts", type=int, required=True, help="number of partitions")
    p.add_argument("--out", required=True, help="folder for the partition list files")
    m = sub.add_parser(
        "merge", help="merge partition caches into one manifest + report", formatter_class=ap.formatter_class
    )
    m.add_argument("--output", required=True, help="the merged cache directory")
    m.add_argument("partitions", nargs="+", help="the partition cache directories")
    e = sub.add_parser(
        "estimate", help="pod-hours for a dataset at a per-core extraction speed", formatter_class=ap.formatter_class
    )
    e.add_argument("--clips", type=int, default=240_000, help="number of clips in the dataset")
    e.add_argument("--seconds", type=float, default=10.0, help="media seconds per clip")
    e.add_argument("--speed", type=float, default=None, help="media-s/s/core (benchmarks.extraction prints it)")
    e.add_argument("--measure", default=None, metavar="PATH", help="measure the speed on these files first")
    e.add_argument("--cores-per-pod", type=int, default=1, help="cores each extraction pod gets")
    return ap


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.cmd == "partition":
        for f in write_partitions(args.input, args.parts, args.out):
            print(f"{f}\t{sum(1 for _ in open(f))} files")
    elif args.cmd == "merge":
        r = merge(args.output, args.partitions)
        print(
            f"{args.output}: {r['inputs']} inputs = {r['ok']} ok + {len(r['rejected'])} rejected "
            f"from {len(r['partitions'])} partitions"
        )
    else:
        speed = args.speed if args.speed is not None else measure_speed(args.measure or "data/samples/av")
        hours = pod_hours(args.clips, args.seconds, speed, args.cores_per_pod)
        print(
            f"{args.clips} clips x {args.seconds:g} s = {args.clips * args.seconds / 3600:.0f} media-hours at "
            f"{speed:.1f} media-s/s/core, {args.cores_per_pod} core(s)/pod: {hours:.1f} pod-hours "
            f"({hours * args.cores_per_pod:.1f} core-hours)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
