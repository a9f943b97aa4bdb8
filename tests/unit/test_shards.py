"""xkd.data.shards: tar shards read back by manifest offset, frame packs, .npy payloads, stale temp removal."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch
from torchvision.io import decode_jpeg, encode_jpeg

from xkd.data import shards


def _frames(n: int, seed: int = 0) -> tuple[list[torch.Tensor], list[bytes]]:
    g = torch.Generator().manual_seed(seed)
    # grey images (a gradient plus a little noise, equal in R, G, B so chroma subsampling loses nothing):
    # JPEG at quality 95 gives them back within a few grey levels
    base = torch.linspace(0, 200, 24).view(1, 24).expand(16, 24)
    imgs = [(base + 20 * torch.rand(16, 24, generator=g)).to(torch.uint8).expand(3, 16, 24) for _ in range(n)]
    return imgs, [encode_jpeg(im, quality=95).numpy().tobytes() for im in imgs]


def test_members_read_back_by_offset_and_the_shard_is_a_standard_tar(tmp_path):
    writer = shards.ShardWriter(tmp_path, max_bytes=1 << 20)
    audio = np.arange(-5000, 5000, 7, dtype=np.int16)
    written = {}
    for i in range(3):
        members = {f"c{i}.frames": shards.pack_jpegs(_frames(2, i)[1]), f"c{i}.audio.npy": shards.array_bytes(audio)}
        shard, where = writer.write(members)
        written.update({name: (shard, where[name], payload) for name, payload in members.items()})
    assert writer.close() == ["shard-000000.tar"]
    for name, (shard, where, payload) in written.items():
        assert shards.read_member(tmp_path / shard, where["offset"], where["size"]) == payload, name
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:  # readable by standard tools, in write order
        assert tar.getnames() == list(written)
        assert tar.extractfile("c1.audio.npy").read() == written["c1.audio.npy"][2]


def test_shards_roll_over_and_are_renamed_only_when_complete(tmp_path):
    writer = shards.ShardWriter(tmp_path, first_index=4, max_bytes=2048)
    first, _ = writer.write({"a.x.npy": shards.array_bytes(np.zeros(600, np.float32))})  # 2.4 kB: rolls over
    assert first == "shard-000004.tar" and (tmp_path / first).exists()
    second, where = writer.write({"b.x.npy": shards.array_bytes(np.ones(10, np.float32))})
    assert second == "shard-000005.tar" and not (tmp_path / second).exists()  # still being written
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".shard-000005.tar.tmp"]
    assert writer.close() == [first, second] and [p.name for p in shards.shard_files(tmp_path)] == [first, second]
    got = shards.bytes_array(shards.read_member(tmp_path / second, where["b.x.npy"]["offset"], 40 + 128))
    assert np.array_equal(got, np.ones(10, np.float32))


def test_frame_pack_round_trip_decodes_to_the_frames(tmp_path):
    imgs, jpegs = _frames(5)
    blob = shards.pack_jpegs(jpegs)
    out = shards.unpack_jpegs(blob)
    assert [bytes(m) for m in out] == jpegs
    for im, m in zip(imgs, out):
        dec = decode_jpeg(torch.frombuffer(bytearray(m), dtype=torch.uint8))
        assert dec.shape == im.shape and (dec.int() - im.int()).abs().float().mean() < 3
    assert shards.unpack_jpegs(shards.pack_jpegs([])) == []
    with pytest.raises(ValueError, match="bad magic"):
        shards.unpack_jpegs(shards.array_bytes(np.zeros(3)))


@pytest.mark.parametrize(
    "array",
    [np.arange(12, dtype=np.int16).reshape(3, 4), np.linspace(0, 1, 7, dtype=np.float32), np.zeros((2, 0, 3))],
)
def test_array_bytes_round_trip_keeps_dtype_and_shape(array):
    view = np.asfortranarray(array) if array.ndim == 2 else array  # non-contiguous input is stored C-order
    got = shards.bytes_array(memoryview(shards.array_bytes(view)))
    assert got.dtype == array.dtype and got.shape == array.shape and np.array_equal(got, array)


def test_truncated_shard_is_a_clear_error(tmp_path):
    writer = shards.ShardWriter(tmp_path)
    shard, where = writer.write({"a.frames": shards.pack_jpegs(_frames(1)[1])})
    writer.close()
    path = tmp_path / shard
    path.write_bytes(path.read_bytes()[: where["a.frames"]["offset"] + 10])
    with pytest.raises(OSError, match=r"expected \d+ bytes at offset 512, got 10 \(shard truncated\?\)"):
        shards.read_member(path, where["a.frames"]["offset"], where["a.frames"]["size"])


def test_remove_stale_temp_removes_only_unfinished_shards(tmp_path):
    writer = shards.ShardWriter(tmp_path)
    writer.write({"a.x.npy": shards.array_bytes(np.zeros(3))})
    writer.close()
    killed = shards.ShardWriter(tmp_path, first_index=1)  # a run killed mid-shard leaves its temp file
    killed.write({"b.x.npy": shards.array_bytes(np.zeros(3))})
    (tmp_path / "notes.tmp").write_text("not ours")
    shards.remove_stale_temp(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp", "shard-000000.tar"]
