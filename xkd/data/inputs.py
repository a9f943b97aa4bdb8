"""Turn a CLI `--input PATH` (a folder, a text file listing paths, or one media file) into jobs."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from xkd.data.cache_build import Job, file_fingerprint
from xkd.errors import UsageError

MEDIA_SUFFIXES = {
    ".mp4",
    ".m4v",
    ".mov",
    ".avi",
    ".mkv",
    ".webm",
    ".mpg",
    ".mpeg",
    ".flv",
    ".wmv",
    ".3gp",
    ".ogv",
    ".ts",
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".opus",
    ".mp3",
    ".m4a",
    ".aac",
    ".wma",
}
LIST_SUFFIXES = {".txt", ".lst", ".list"}


def discover(path: str) -> tuple[list[tuple[str, Path]], list[str]]:
    """Return ([(source as given, resolved path)], ignored non-media files of a folder scan)."""
    root = Path(path)
    if not root.exists():
        raise UsageError(f"input path does not exist: {path}")
    if root.is_dir():
        found, ignored = [], []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                full = Path(dirpath) / name
                if name.startswith("."):
                    continue
                (found if full.suffix.lower() in MEDIA_SUFFIXES else ignored).append(str(full))
        return [(s, Path(s)) for s in found], ignored
    if root.suffix.lower() in LIST_SUFFIXES:
        items = []
        for line in root.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line)
                items.append((line, p if p.is_absolute() else root.parent / p))
        if not items:
            raise UsageError(f"the list file {path} names no paths")
        return items, []
    return [(path, root)], []


def clip_ids(paths: list[Path]) -> list[str]:
    """Stable ids: the path relative to the inputs' common folder, without the extension; the extension
    is kept only where two inputs would otherwise share an id (a.mp4 and a.avi)."""
    absolute = [os.path.abspath(p) for p in paths]
    if not absolute:
        return []
    common = os.path.commonpath([os.path.dirname(a) for a in absolute])
    rel = [PurePosixPath(Path(os.path.relpath(a, common)).as_posix()) for a in absolute]
    stems = [str(r.with_suffix("")) for r in rel]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [str(r) if counts[s] > 1 else s for r, s in zip(rel, stems)]


def media_jobs(path: str) -> tuple[list[Job], list[str]]:
    """Jobs for every media input under `path`; missing listed files still become jobs (and rejects)."""
    items, ignored = discover(path)
    ids = clip_ids([p for _, p in items])
    jobs = []
    for (source, p), cid in zip(items, ids):
        try:
            fp = file_fingerprint(p)
        except OSError:
            fp = {"missing": True}
        jobs.append(Job(source=source, path=str(p), clip_id=cid, fingerprint=fp))
    return jobs, ignored
