"""Shard files of a cache directory: plain POSIX tar files, one member per stored array.

Why tar: many small files are slow on every filesystem DVC or a PVC offers, and a tar shard stays
readable by standard tools (and by webdataset). The manifest records where each member's bytes start
inside its shard, so readers seek straight to them (random access for a map-style dataset) instead of
scanning the archive.

Member payloads:
- `<clip_id>.frames`: a frame pack (see `pack_jpegs`): JPEG-compressed RGB frames.
- `<clip_id>.<name>.npy`: a NumPy array in .npy format (self-describing dtype and shape).
"""

from __future__ import annotations

import io
import os
import re
import struct
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np

from xkd.errors import UsageError

_BLOCK = tarfile.BLOCKSIZE
_PACK_MAGIC = b"XKDJPG1\0"


def pack_jpegs(jpegs: list[bytes]) -> bytes:
    """Frame pack: magic, uint32 count, uint32 length per frame, then the JPEG bytes back to back.
    One member per clip keeps the tar index small (K400 has ~20 M frames at 8 fps)."""
    header = _PACK_MAGIC + struct.pack(f"<I{len(jpegs)}I", len(jpegs), *(len(j) for j in jpegs))
    return header + b"".join(jpegs)


def unpack_jpegs(blob: bytes | memoryview) -> list[memoryview]:
    view = memoryview(blob)
    if bytes(view[:8]) != _PACK_MAGIC:
        raise ValueError("not an XKD frame pack (bad magic)")
    (count,) = struct.unpack_from("<I", view, 8)
    lengths = struct.unpack_from(f"<{count}I", view, 12)
    out, pos = [], 12 + 4 * count
    for n in lengths:
        out.append(view[pos : pos + n])
        pos += n
    return out


def array_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def bytes_array(blob: bytes | memoryview) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


class ShardWriter:
    """Writes members into `shard-NNNNNN.tar` files, rolling over at `max_bytes`.

    Each shard is written under a temporary name (`temp_shard_path`) and renamed when complete, so a killed
    run never leaves a truncated shard under a real name. `sync()` makes every member written so far durable
    in that temporary file: a killed run's journal then points at bytes that `salvage_temp_shard` can turn
    into a complete shard on the next run."""

    def __init__(self, directory: Path, first_index: int = 0, max_bytes: int = 512 << 20):
        self.directory = Path(directory)
        self.index = first_index
        self.max_bytes = max_bytes
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self.written: list[str] = []

    @property
    def shard_name(self) -> str:
        return f"shard-{self.index:06d}.tar"

    def _open(self) -> None:
        self._tmp = temp_shard_path(self.directory, self.shard_name)
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.PAX_FORMAT)

    def write(self, members: dict[str, bytes]) -> tuple[str, dict[str, dict[str, int]]]:
        """Write one clip's members together into the current shard; return (shard, {name: offset/size})."""
        if self._tar is None:
            self._open()
        where: dict[str, dict[str, int]] = {}
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            info.mode = 0o644
            self._tar.addfile(info, io.BytesIO(payload))
            # addfile leaves the offset after the payload padded to whole 512-byte blocks.
            padded = -(-len(payload) // _BLOCK) * _BLOCK
            where[name] = {"offset": self._tar.offset - padded, "size": len(payload)}
        shard = self.shard_name
        if self._tar.offset >= self.max_bytes:
            self._close()
        return shard, where

    def sync(self) -> None:
        """Flush the open shard's members to disk (a no-op when the last write closed the shard)."""
        if self._tar is not None:
            self._tar.fileobj.flush()
            os.fsync(self._tar.fileobj.fileno())

    def _close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        _fsync_path(self._tmp)
        self._tmp.replace(self.directory / self.shard_name)
        fsync_dir(self.directory)
        self.written.append(self.shard_name)
        self._tar, self._tmp = None, None
        self.index += 1

    def close(self) -> list[str]:
        self._close()
        return self.written


def temp_shard_path(directory: Path, shard: str) -> Path:
    """Where `ShardWriter` writes `shard` until it is complete."""
    return Path(directory) / f".{shard}.tmp"


def member_end(where: dict[str, int]) -> int:
    """The offset just past a member's payload, padded to whole tar blocks (where the next header starts)."""
    return where["offset"] + -(-where["size"] // _BLOCK) * _BLOCK


def salvage_temp_shard(directory: Path, shard: str, end: int) -> bool:
    """Turn the temporary file of a killed run's unfinished `shard` into a complete shard holding its first
    `end` bytes (the members its journal recorded), cut where a member ends and closed with tar's end-of-archive
    blocks. Returns False (and changes nothing) when the temporary file is missing or shorter than `end`."""
    tmp = temp_shard_path(directory, shard)
    if shard_index(shard) is None or end <= 0 or end % _BLOCK or not tmp.is_file() or tmp.stat().st_size < end:
        return False
    with open(tmp, "r+b") as fh:
        fh.truncate(end)  # drops a half-written member of the file that was in flight
        fh.seek(end)
        fh.write(b"\0" * (2 * _BLOCK))
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(Path(directory) / shard)
    fsync_dir(directory)
    return True


def _fsync_path(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_dir(directory: Path) -> None:
    """Make renames inside `directory` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_member(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    if len(data) != size:
        raise OSError(f"{path}: expected {size} bytes at offset {offset}, got {len(data)} (shard truncated?)")
    return data


# Only names the writer produces are the cache's shards; anything else matching `shard-*.tar` (a user's
# `shard-backup.tar`) is not the cache's to count, reuse or delete.
_SHARD_NAME = re.compile(r"shard-(\d{6,})\.tar")


def shard_index(name: str) -> int | None:
    """The index of a shard file name written by `ShardWriter`, or None for any other name."""
    m = _SHARD_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


def shard_files(directory: Path) -> list[Path]:
    """The shard files this cache wrote (unknown files matching the glob are left alone)."""
    return sorted(p for p in Path(directory).glob("shard-*.tar") if shard_index(p.name) is not None and p.is_file())


def checked_shard(directory: Path, shard: object, clip_id: str, roots: tuple[str, ...] = ()) -> Path:
    """The path of a manifest entry's `shard`, confined to the cache: a shard file name written by
    `ShardWriter`, directly in `directory` or in one of `roots` (relative to it: the partition folders a
    merged cache points into, from its report). Anything else (an absolute path, `..`, another file name)
    is a corrupt or crafted manifest and raises UsageError naming the entry."""
    ok = isinstance(shard, str) and "\\" not in shard and "\0" not in shard
    if ok:
        rel = PurePosixPath(shard)
        allowed = {"."} | {os.path.normpath(r) for r in roots if isinstance(r, str) and r}
        ok = (
            not rel.is_absolute()
            and shard_index(rel.name) is not None
            and os.path.normpath(rel.parent.as_posix()) in allowed
        )
    if not ok:
        raise UsageError(
            f"{Path(directory) / 'manifest.jsonl'}: clip {clip_id!r} names shard {shard!r}, which is not a shard "
            "file of this cache directory; refusing to read it (corrupt or crafted manifest: rebuild the cache)"
        )
    return Path(directory) / shard


def remove_stale_temp(directory: Path) -> None:
    """Delete unfinished shards left by a killed run (after `salvage_temp_shard` kept what its journal names)."""
    for tmp in Path(directory).glob(".shard-*.tar.tmp"):
        os.remove(tmp)
