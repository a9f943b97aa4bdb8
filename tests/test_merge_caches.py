"""Partitioned extraction + merge equals one run over the same inputs (ids, counts, frames, audio)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sample_data import AV

from components.merge_caches import main, merge, partition, pod_hours, write_partitions
from xkd.data.cache import CacheReader
from xkd.errors import UsageError

pytestmark = pytest.mark.slow


def test_partition_is_deterministic_balanced_and_nearly_stable():
    keys = [f"class{i % 7}/clip{i}.mp4" for i in range(1000)]
    parts = partition(keys, 8)
    assert parts == partition(list(keys), 8)
    assert sorted(i for p in parts for i in p) == list(range(1000))
    assert {len(p) for p in parts} <= {125}
    # Adding 5 files moves few of the others: each partition cache stays mostly reusable.
    grown = partition(keys + [f"new/clip{i}.mp4" for i in range(5)], 8)
    where = {keys[i]: n for n, p in enumerate(parts) for i in p}
    moved = sum(where[keys[i]] != n for n, p in enumerate(grown) for i in p if i < 1000)
    assert moved <= 5 * 8
    with pytest.raises(UsageError):
        partition(keys, 0)


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("merge")
    from components.extract_clips import run

    lists = write_partitions(str(AV), 3, tmp / "lists")
    parts = []
    for f in lists:
        out = tmp / "cache" / f.stem
        run(str(f), str(out), workers=1)  # spawn start-up of a pool costs more than it saves here
        parts.append(out)
    report = merge(tmp / "cache", parts)
    return tmp / "cache", report, lists


def test_merged_cache_equals_single_run(merged, samples_clips):
    cache, report, lists = merged
    single = json.loads((samples_clips / "report.json").read_text())
    assert [len(f.read_text().split()) for f in lists] == [5, 5, 4]
    assert report["inputs"] == single["inputs"] == 14
    assert report["ok"] == single["ok"] and len(report["rejected"]) == len(single["rejected"])
    assert report["inputs"] == report["ok"] + len(report["rejected"])
    assert sum(p["inputs"] for p in report["partitions"]) == report["inputs"]
    a, b = CacheReader(cache), CacheReader(samples_clips)
    assert sorted(a.ids()) == sorted(b.ids())
    # mmaction2_test.avi / .mp4 land in different partitions: their ids must still be disambiguated.
    assert {"mmaction2_test.avi", "mmaction2_test.mp4"} <= set(a.ids())
    for cid in b.ids():
        ea, eb = a.entry(cid), b.entry(cid)
        assert ea["shard"].startswith("part-") and ea["video"] == eb["video"] and ea["audio"] == eb["audio"]
        # Same JPEG bytes frame by frame = same decoded frames (decoding all 14 clips twice costs seconds).
        assert [bytes(j) for j in a.jpegs(cid)] == [bytes(j) for j in b.jpegs(cid)], cid
        if eb["audio"] is not None:
            assert np.array_equal(a.audio(cid), b.audio(cid))
    frames, fps = a.clip("R6llTwEh07w")
    assert torch.equal(frames, b.clip("R6llTwEh07w")[0]) and frames.shape[0] == eb_frames(b, "R6llTwEh07w")


def eb_frames(reader, cid):
    return reader.entry(cid)["video"]["frames"]


def test_spectrograms_from_a_merged_clip_cache(merged, tmp_path):
    from components.cache_spectrograms import run

    cache, report, _ = merged
    spec = run(str(tmp_path / "spec"), clips=str(cache), workers=1)
    assert spec["inputs"] == report["ok"] and spec["ok"] == sum(
        1 for e in CacheReader(cache).entries.values() if e["audio"] is not None
    )


def test_merge_refuses_overlap_and_unfinished_parts(merged, tmp_path):
    cache, _, _ = merged
    with pytest.raises(UsageError, match="two partitions"):
        merge(tmp_path / "m", [cache / "part-000", cache / "part-000"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not a finished cache"):
        merge(tmp_path / "m", [tmp_path / "empty"])


def test_pod_hours_for_kinetics400(capsys):
    # 240k clips x 10 s = 2.4 M media-seconds; at 30 media-s/s on one core that is 80,000 s = 22.2 h.
    assert pod_hours(240_000, 10.0, 30.0, 1) == pytest.approx(22.22, abs=0.01)
    assert pod_hours(240_000, 10.0, 30.0, 4) == pytest.approx(5.56, abs=0.01)
    assert main(["estimate", "--speed", "30"]) == 0
    assert "22.2 pod-hours" in capsys.readouterr().out
