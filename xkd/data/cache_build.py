"""The one implementation behind every cache step: fan a per-input function out over worker processes,
write its members into tar shards, and account for every input in `manifest.jsonl` + `report.json`.

Contract (docs/DESIGN.md): every input ends up either in the manifest or in `report.rejected` with a reject
code and a readable reason, and `inputs == ok + len(rejected)`.

Re-running is incremental: entries whose input fingerprint (size + mtime, or the upstream cache entry)
and step parameters are unchanged are kept with their shards; only new or changed inputs are processed.
A re-run on unchanged input rewrites nothing (a no-op).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from xkd.data.media import MediaError
from xkd.data.shards import ShardWriter, remove_stale_temp, shard_files, shard_index
from xkd.errors import UsageError

MANIFEST = "manifest.jsonl"
REPORT = "report.json"


@dataclass(frozen=True)
class Job:
    """One input: `source` is the path as given, `path` where to read it, `payload` step-specific data."""

    source: str
    path: str
    clip_id: str
    fingerprint: dict
    payload: dict = field(default_factory=dict)


# process(job, params) -> (manifest fields, {member suffix: bytes}); raises MediaError for bad input.
ProcessFn = Callable[[Job, dict], tuple[dict, dict[str, bytes]]]


def params_digest(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def file_fingerprint(path: str | os.PathLike) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_manifest(directory: Path) -> list[dict]:
    path = Path(directory) / MANIFEST
    if not path.exists():
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_report(directory: Path) -> dict:
    path = Path(directory) / REPORT
    return json.loads(path.read_text()) if path.exists() else {}


# What each step stores: recognises a cache's kind from its manifest when report.json is missing.
_KIND_BY_MEMBER = {"frames": "extract_clips", "pcm16.npy": "extract_clips", "logmel.npy": "cache_spectrograms"}


def cache_kind(directory: Path) -> str | None:
    """The step that wrote the cache in `directory` (`extract_clips`, `cache_spectrograms`), or None."""
    step = (read_report(directory).get("params") or {}).get("step")
    if isinstance(step, str) and step:
        return step.split("/")[0]
    path = Path(directory) / MANIFEST
    if path.is_file():
        with open(path) as fh:
            first = next((line for line in fh if line.strip()), None)
        try:
            members = (json.loads(first).get("members") or {}) if first is not None else {}
        except (ValueError, AttributeError):  # not a manifest this library wrote
            members = {}
        if isinstance(members, dict):
            return next((_KIND_BY_MEMBER[m] for m in members if m in _KIND_BY_MEMBER), None)
    return None


def _refuse_other_kind(output: Path, params: dict) -> None:
    """A step must never replace the manifest (and delete the shards) of another step's cache."""
    step = params.get("step")
    if not step or not output.is_dir():
        return
    mine, found = step.split("/")[0], cache_kind(output)
    if found is not None and found != mine:
        raise UsageError(
            f"--output {output} is a {found} cache (written by components.{found}); {mine} would replace its "
            f"manifest and delete its shards: give {mine} its own --output directory"
        )


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _run_one(args: tuple[ProcessFn, Job, dict]) -> tuple[str, object]:
    process, job, params = args
    try:
        return "ok", process(job, params)
    except MediaError as err:
        return "rejected", {"code": err.code, "reason": err.reason}
    except Exception as err:  # a bug or an unforeseen input: counted and reported, never swallowed
        tb = traceback.format_exception_only(type(err), err)[-1].strip()
        return "rejected", {"code": "decode_error", "reason": f"unexpected error: {tb}"}


def _previous(output: Path, digest: str) -> tuple[dict, dict]:
    """Reusable entries and reject rows of the previous run, keyed by source."""
    report = read_report(output)
    if report.get("params_digest") != digest:
        return {}, {}
    present = {p.name for p in shard_files(output)}
    entries = {e["source"]: e for e in read_manifest(output) if e["shard"] in present}
    # A timeout may be transient (a loaded machine): retry those instead of reusing them.
    rejects = {r["path"]: r for r in report.get("rejected", []) if r["code"] != "timeout"}
    return entries, rejects


def build_cache(
    jobs: list[Job],
    output: Path,
    params: dict,
    process: ProcessFn,
    *,
    workers: int = 1,
    desc: str = "cache",
    extra_report: dict | None = None,
    shard_bytes: int = 512 << 20,
) -> dict:
    """Process `jobs` into the cache directory `output`; return the report dict."""
    output = Path(output)
    _refuse_other_kind(output, params)  # before touching anything
    output.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(output)
    digest = params_digest(params)
    old_entries, old_rejects = _previous(output, digest)

    results: dict[str, tuple[str, dict]] = {}
    todo: list[Job] = []
    for job in jobs:
        old = old_entries.get(job.source)
        if old is not None and old.get("fingerprint") == job.fingerprint and old["clip_id"] == job.clip_id:
            results[job.source] = ("ok", old)
            continue
        rej = old_rejects.get(job.source)
        if rej is not None and rej.get("fingerprint") == job.fingerprint:
            results[job.source] = ("rejected", rej)
            continue
        todo.append(job)

    old_sources = set(old_entries) | set(old_rejects)
    # Up to date only when the previous run's report is there (an empty input has no sources either).
    if not todo and old_sources == {j.source for j in jobs} and read_report(output).get("params_digest") == digest:
        report = read_report(output)
        tqdm.write(f"{desc}: up to date ({report['ok']} ok, {len(report['rejected'])} rejected); nothing to do")
        return report

    started = time.time()
    existing = [shard_index(p.name) for p in shard_files(output)]
    writer = ShardWriter(output, first_index=max(existing, default=-1) + 1, max_bytes=shard_bytes)
    try:
        for job, (status, value) in zip(todo, _map(process, todo, params, workers, desc)):
            if status == "ok":
                fields, members = value
                shard, where = writer.write({f"{job.clip_id}.{k}": v for k, v in members.items()})
                entry = {
                    "clip_id": job.clip_id,
                    "source": job.source,
                    **fields,
                    "shard": shard,
                    "members": {k.removeprefix(job.clip_id + "."): v for k, v in where.items()},
                    "fingerprint": job.fingerprint,
                }
                results[job.source] = ("ok", entry)
            else:
                results[job.source] = ("rejected", {"path": job.source, **value, "fingerprint": job.fingerprint})
    finally:
        writer.close()

    entries = [results[j.source][1] for j in jobs if results[j.source][0] == "ok"]
    rejected = [results[j.source][1] for j in jobs if results[j.source][0] == "rejected"]
    _atomic_write(output / MANIFEST, "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
    referenced = {e["shard"] for e in entries}
    for stale in shard_files(output):
        if stale.name not in referenced:
            stale.unlink()
    report = _report(
        jobs, entries, rejected, output, params, digest, extra_report, len(jobs) - len(todo), time.time() - started
    )
    _atomic_write(output / REPORT, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report


def _map(process: ProcessFn, todo: list[Job], params: dict, workers: int, desc: str):
    args = [(process, job, params) for job in todo]
    bar = tqdm(total=len(todo), desc=desc, unit="file", dynamic_ncols=True)
    try:
        if workers <= 1 or len(todo) <= 1:
            for a in args:
                yield _run_one(a)
                bar.update()
            return
        # spawn: workers must not inherit the parent's torch/OpenMP thread pools.
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            for result in pool.map(_run_one, args, chunksize=1):
                yield result
                bar.update()
    finally:
        bar.close()


def _report(jobs, entries, rejected, output, params, digest, extra, reused, elapsed) -> dict:
    codes: dict[str, int] = {}
    for r in rejected:
        codes[r["code"]] = codes.get(r["code"], 0) + 1
    shard_bytes = sum(p.stat().st_size for p in shard_files(output))
    media_s = sum(e.get("duration_s") or 0.0 for e in entries)
    report = {
        "inputs": len(jobs),
        "ok": len(entries),
        "rejected": rejected,
        "rejected_by_code": codes,
        "reused_from_previous_run": reused,
        "params": params,
        "params_digest": digest,
        "shard_bytes": shard_bytes,
        "media_seconds": round(media_s, 3),
        "bytes_per_media_second": round(shard_bytes / media_s, 1) if media_s else None,
        "elapsed_s": round(elapsed, 3),
    }
    report.update(extra or {})
    assert report["inputs"] == report["ok"] + len(report["rejected"]), "accounting bug: inputs != ok + rejected"
    return report


def summarize(report: dict, output: str) -> int:
    """Print one line per outcome; exit status 0 only when at least one clip is in the cache."""
    for row in report["rejected"]:
        print(f"rejected [{row['code']}] {row['path']}: {row['reason']}", file=sys.stderr)
    print(
        f"{output}: {report['inputs']} inputs, {report['ok']} ok, {len(report['rejected'])} rejected "
        f"{report['rejected_by_code']}",
        file=sys.stderr,
    )
    if report["ok"] == 0:
        print(f"error: no usable clip in {report['inputs']} inputs; see {output}/report.json", file=sys.stderr)
        return 1
    return 0
