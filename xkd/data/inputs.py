"""Turn a CLI `--input PATH` (a folder, a text file listing paths, or one media file) into jobs.

Nothing found in a folder is dropped silently; every file is a job or is listed in the report:

* Hidden files (names starting with ".") are treated like any other file: a hidden media file is an input
  (processed, or rejected with a code: a macOS `._name.mp4` AppleDouble sidecar is `unreadable`); any other
  hidden file (`.DS_Store`) is listed in `ignored_non_media`.
* Hidden folders (`.git`, `.cache`, ...) are not searched; each one is listed in `ignored_non_media` as a whole.

Clip ids (`clip_ids`) are unique and depend only on the set of inputs, never on listing order or workers.
"""

from __future__ import annotations

import os
from collections import Counter
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
            ignored.extend(str(Path(dirpath) / d) for d in sorted(dirnames) if d.startswith("."))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                full = Path(dirpath) / name
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
    is kept only where two inputs would otherwise share an id (a.mp4 and a.avi).

    Where that still leaves one id for several inputs (dup.mp4, dup.webm and dup.mp4.mkv: the last one's
    stem is "dup.mp4"), only the inputs sharing it change: each gets its relative path with the extension,
    and should even that be taken (one file listed twice), "~2", "~3", ... in sorted order. Every other
    input keeps the id above, and the result depends only on the set of paths, not on their order."""
    absolute = [os.path.abspath(p) for p in paths]
    if not absolute:
        return []
    common = os.path.commonpath([os.path.dirname(a) for a in absolute])
    rel = [PurePosixPath(Path(os.path.relpath(a, common)).as_posix()) for a in absolute]
    stems = [str(r.with_suffix("")) for r in rel]
    counts = Counter(stems)
    ids = [str(r) if counts[s] > 1 else s for r, s in zip(rel, stems)]
    shared = Counter(ids)
    if len(shared) == len(ids):
        return ids
    taken = {i for i in ids if shared[i] == 1}
    for k in sorted((k for k, i in enumerate(ids) if shared[i] > 1), key=lambda k: (str(rel[k]), ids[k])):
        cid, n = str(rel[k]), 1
        while cid in taken:
            n += 1
            cid = f"{rel[k]}~{n}"
        taken.add(cid)
        ids[k] = cid
    return ids


def media_jobs(path: str) -> tuple[list[Job], list[str]]:
    """Jobs for every media input under `path`; missing listed files still become jobs (and rejects)."""
    items, ignored = discover(path)
    # A file named twice (a list repeating a line) is one input: it gets the id it would have if named once,
    # and build_cache processes it once and counts the repeat.
    first = {os.path.realpath(p): p for _, p in reversed(items)}
    by_file = dict(zip(first, clip_ids(list(first.values()))))
    ids = [by_file[os.path.realpath(p)] for _, p in items]
    jobs = []
    for (source, p), cid in zip(items, ids):
        try:
            fp = file_fingerprint(p)
        except OSError:
            fp = {"missing": True}
        jobs.append(Job(source=source, path=str(p), clip_id=cid, fingerprint=fp))
    return jobs, ignored
