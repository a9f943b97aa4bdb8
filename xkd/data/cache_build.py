"""The one implementation behind every cache step: fan a per-input function out over worker processes,
write its members into tar shards, and account for every input in `manifest.jsonl` + `report.json`.

Contract (docs/DESIGN.md): every input ends up either in the manifest or in `report.rejected` with a reject
code and a readable reason, and `inputs == ok + len(rejected)`.

Re-running is incremental: entries whose input fingerprint (size + mtime, or the upstream cache entry)
and step parameters are unchanged are kept with their shards; only new or changed inputs are processed.
A re-run on unchanged input rewrites nothing (a no-op).

Crash safety: every processed input is committed as it finishes. Its members are flushed into the open
shard and its manifest entry (or reject row) is appended to `.journal.jsonl` with the parameters digest, so
a run killed at any point loses only the inputs in flight: the next run completes the unfinished shard from
the journal and reuses its entries. `manifest.jsonl` and `report.json` are replaced together at the end:
the report records the manifest's sha256 (and is journaled before the manifest is replaced), so a run killed
between the two writes leaves a report that the next run recognises as stale and rewrites.

The same input listed twice (same resolved path) is one input: processed once, counted in the report.
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

from xkd.data.media import MediaError
from xkd.data.shards import (
    ShardWriter,
    fsync_dir,
    member_end,
    remove_stale_temp,
    salvage_temp_shard,
    shard_files,
    shard_index,
)
from xkd.errors import UsageError
from xkd.log import logger, progress

log = logger(__name__)

MANIFEST = "manifest.jsonl"
REPORT = "report.json"
JOURNAL = ".journal.jsonl"  # hidden: a run's committed work until manifest + report replace it


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


def check_step_args(*, workers: int, min_duration: float, timeout_s: float) -> None:
    """The arguments every cache step shares, checked before any work: one line naming the flag (exit 2)."""
    if workers < 1:  # 0 or a negative count used to be accepted and run with one worker
        raise UsageError(f"--workers must be at least 1 (got {workers})")
    if not 0 <= min_duration < float("inf"):  # `not` also catches nan; -5 used to mean "no minimum" silently
        raise UsageError(f"--min-duration must be a non-negative, finite number of seconds (got {min_duration:g})")
    if not 0 < timeout_s < float("inf"):
        raise UsageError(f"--timeout must be a positive, finite number of seconds (got {timeout_s:g})")


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


def manifest_sha256(directory: Path) -> str | None:
    path = Path(directory) / MANIFEST
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


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
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


class Journal:
    """`.journal.jsonl` of a cache directory: one JSON row per committed input, appended and fsync'd.

    Rows: {"entry": manifest entry, "params_digest"}, {"reject": reject row, "params_digest"} and, just
    before a run replaces the manifest, {"report": the report it is about to write}."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / JOURNAL
        self._fh = None

    def rows(self) -> list[dict]:
        """The rows, cutting off a line a kill left half-written (appending after it would garble the next)."""
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) != len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(len(whole))
        rows = []
        for line in whole.decode(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # not one of ours; ignore rather than fail the run
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def append(self, row: dict) -> None:
        if self._fh is None:
            self._fh = open(self.path, "a")
        self._fh.write(json.dumps(row, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _run_one(args: tuple[ProcessFn, Job, dict]) -> tuple[str, object]:
    process, job, params = args
    try:
        return "ok", process(job, params)
    except MediaError as err:
        return "rejected", {"code": err.code, "reason": err.reason}
    except Exception as err:  # a bug or an unforeseen input: counted and reported, never swallowed
        tb = traceback.format_exception_only(type(err), err)[-1].strip()
        return "rejected", {"code": "decode_error", "reason": f"unexpected error: {tb}"}


def _manifest_report(output: Path, journal_rows: list[dict]) -> tuple[dict | None, bool]:
    """(the report describing the manifest now on disk or None, whether report.json is that report).

    report.json describes the manifest when it records the manifest's sha256. A run killed after replacing
    the manifest but before writing report.json leaves the old report; the report it was about to write is
    then the journal's last one with the manifest's digest. A report without the field (written before it
    existed) is taken as it is, and rewritten with the field."""
    report, sha = read_report(output), manifest_sha256(output)
    if sha is not None and report.get("manifest_sha256") == sha:
        return report, True
    journaled = [r["report"] for r in journal_rows if isinstance(r.get("report"), dict)]
    found = next((r for r in reversed(journaled) if sha is not None and r.get("manifest_sha256") == sha), None)
    if found is None and report and "manifest_sha256" not in report:
        return report, False
    return found, False


def _salvage(output: Path, journal_rows: list[dict], digest: str) -> None:
    """Complete the shards a killed run left unfinished, up to the last member its journal recorded."""
    ends: dict[str, int] = {}
    for row in journal_rows:
        e = row.get("entry")
        if row.get("params_digest") == digest and isinstance(e, dict) and shard_index(str(e.get("shard"))) is not None:
            end = max((member_end(w) for w in (e.get("members") or {}).values()), default=0)
            ends[e["shard"]] = max(ends.get(e["shard"], 0), end)
    present = {p.name for p in shard_files(output)}
    for shard, end in ends.items():
        if shard not in present:
            salvage_temp_shard(output, shard, end)


def _previous(output: Path, digest: str, journal_rows: list[dict], report: dict | None) -> tuple[dict, dict]:
    """Reusable entries and reject rows, keyed by source, newest first: the journal's (from this run's killed
    predecessors), then those of the manifest and its report. Only entries whose shard is there are reusable."""
    sizes = {p.name: p.stat().st_size for p in shard_files(output)}

    def usable(e: dict) -> bool:
        where = list((e.get("members") or {}).values())
        return e.get("shard") in sizes and all(member_end(w) <= sizes[e["shard"]] for w in where)

    entries: dict[str, list[dict]] = {}
    rejects: dict[str, list[dict]] = {}
    for row in reversed(journal_rows):
        if row.get("params_digest") != digest:
            continue
        if isinstance(row.get("entry"), dict) and usable(row["entry"]):
            entries.setdefault(row["entry"]["source"], []).append(row["entry"])
        elif isinstance(row.get("reject"), dict):
            rejects.setdefault(row["reject"]["path"], []).append(row["reject"])
    if report is not None and report.get("params_digest") == digest:
        for e in read_manifest(output):
            if usable(e):
                entries.setdefault(e["source"], []).append(e)
        for r in report.get("rejected", []):
            rejects.setdefault(r["path"], []).append(r)
    # A timeout may be transient (a loaded machine): retry those instead of reusing them.
    rejects = {k: [r for r in rows if r.get("code") != "timeout"] for k, rows in rejects.items()}
    return entries, rejects


def _unique_jobs(jobs: list[Job]) -> tuple[list[Job], list[dict]]:
    """Jobs reading one file (the same resolved path, e.g. a list naming it twice) are one input: the first
    one is kept and every other is listed as a duplicate of it."""
    kept: dict[str, Job] = {}
    duplicates = []
    for job in jobs:
        key = os.path.realpath(job.path)
        if key in kept:
            duplicates.append({"path": job.source, "same_as": kept[key].source})
        else:
            kept[key] = job
    return list(kept.values()), duplicates


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
    jobs, duplicates = _unique_jobs(jobs)
    extra_report = {**(extra_report or {}), "duplicate_inputs": len(duplicates), "duplicate_sources": duplicates}
    digest = params_digest(params)
    journal = Journal(output)
    journal_rows = journal.rows()
    _salvage(output, journal_rows, digest)
    remove_stale_temp(output)
    report_now, consistent = _manifest_report(output, journal_rows)
    old_entries, old_rejects = _previous(output, digest, journal_rows, report_now)

    results: dict[str, tuple[str, dict]] = {}
    todo: list[Job] = []
    for job in jobs:
        old = next(
            (
                e
                for e in old_entries.get(job.source, [])
                if e.get("fingerprint") == job.fingerprint and e["clip_id"] == job.clip_id
            ),
            None,
        )
        if old is not None:
            results[job.source] = ("ok", old)
            continue
        rej = next((r for r in old_rejects.get(job.source, []) if r.get("fingerprint") == job.fingerprint), None)
        if rej is not None:
            results[job.source] = ("rejected", rej)
            continue
        todo.append(job)

    # Up to date only when the manifest and its report on disk hold exactly this outcome already.
    if not todo and consistent and report_now.get("params_digest") == digest:
        entries, rejected = _outcome(jobs, results)
        if (
            entries == read_manifest(output)
            and rejected == report_now.get("rejected")
            and duplicates == report_now.get("duplicate_sources", [])
        ):
            # Leftovers of a run killed while cleaning up after itself: the manifest holds all it did.
            _delete_unreferenced(output, entries)
            journal.remove()
            log.info(
                f"{desc}: up to date ({report_now['ok']} ok, {len(report_now['rejected'])} rejected); nothing to do"
            )
            return report_now

    started = time.time()
    # New shards never take a name a journal row points at (a shard deleted since must not be confused with it).
    journaled = [shard_index(str((r.get("entry") or {}).get("shard"))) for r in journal_rows]
    existing = [shard_index(p.name) for p in shard_files(output)] + [i for i in journaled if i is not None]
    writer = ShardWriter(output, first_index=max(existing, default=-1) + 1, max_bytes=shard_bytes)
    try:
        # the generator first: zip then drains it, so its progress bar counts the last file and closes
        for (status, value), job in zip(_map(process, todo, params, workers, desc), todo):
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
                writer.sync()  # the members are on disk before the journal points at them
                journal.append({"entry": entry, "params_digest": digest})
                results[job.source] = ("ok", entry)
            else:
                row = {"path": job.source, **value, "fingerprint": job.fingerprint}
                journal.append({"reject": row, "params_digest": digest})
                results[job.source] = ("rejected", row)
    finally:
        writer.close()

    entries, rejected = _outcome(jobs, results)
    manifest = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
    report = _report(
        jobs, entries, rejected, output, params, digest, extra_report, len(jobs) - len(todo), time.time() - started
    )
    report["manifest_sha256"] = hashlib.sha256(manifest.encode()).hexdigest()
    # Journaled first: should a kill fall between the manifest and the report, the next run finds it there.
    journal.append({"report": report})
    _atomic_write(output / MANIFEST, manifest)
    _atomic_write(output / REPORT, json.dumps(report, indent=2, sort_keys=True) + "\n")
    _delete_unreferenced(output, entries)
    journal.remove()
    return report


def _delete_unreferenced(output: Path, entries: list[dict]) -> None:
    referenced = {e["shard"] for e in entries}
    for stale in shard_files(output):
        if stale.name not in referenced:
            stale.unlink()


def _outcome(jobs: list[Job], results: dict[str, tuple[str, dict]]) -> tuple[list[dict], list[dict]]:
    entries = [results[j.source][1] for j in jobs if results[j.source][0] == "ok"]
    rejected = [results[j.source][1] for j in jobs if results[j.source][0] == "rejected"]
    return entries, rejected


def _map(process: ProcessFn, todo: list[Job], params: dict, workers: int, desc: str):
    args = [(process, job, params) for job in todo]
    bar = progress(total=len(todo), desc=desc, unit="file")
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
    media_s = sum(e.get("duration_s") or 0.0 for e in entries)
    # shard_bytes counts only the shards the manifest keeps (unreferenced ones are deleted right after).
    referenced = {e["shard"] for e in entries}
    shard_bytes = sum(p.stat().st_size for p in shard_files(output) if p.name in referenced)
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
    """Log one line per outcome; exit status 0 only when at least one clip is in the cache."""
    for row in report["rejected"]:
        log.warning(f"rejected [{row['code']}] {row['path']}: {row['reason']}")
    if report.get("duplicate_inputs"):
        log.warning(
            f"{report['duplicate_inputs']} input(s) listed more than once were processed once "
            f"(see duplicate_sources in {output}/report.json)"
        )
    log.info(
        f"{output}: {report['inputs']} inputs, {report['ok']} ok, {len(report['rejected'])} rejected "
        f"{report['rejected_by_code']}"
    )
    if report["ok"] == 0:  # the step's final one-line error, plain like a usage error's
        print(f"error: no usable clip in {report['inputs']} inputs; see {output}/report.json", file=sys.stderr)
        return 1
    return 0
