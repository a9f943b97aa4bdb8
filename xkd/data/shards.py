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
import struct
import tarfile
from pathlib import Path

import numpy as np

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

    Each shard is written under a temporary name and renamed when complete, so a killed run never
    leaves a truncated shard under a real name."""

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
        self._tmp = self.directory / f".{self.shard_name}.tmp"
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

    def _close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._tmp.replace(self.directory / self.shard_name)
        self.written.append(self.shard_name)
        self._tar, self._tmp = None, None
        self.index += 1

    def close(self) -> list[str]:
        self._close()
        return self.written


def read_member(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read(size)
    if len(data) != size:
        raise OSError(f"{path}: expected {size} bytes at offset {offset}, got {len(data)} (shard truncated?)")
    return data


def shard_files(directory: Path) -> list[Path]:
    return sorted(Path(directory).glob("shard-*.tar"))


def remove_stale_temp(directory: Path) -> None:
    for tmp in Path(directory).glob(".shard-*.tar.tmp"):
        os.remove(tmp)
