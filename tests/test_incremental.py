"""Re-running a cache step on unchanged input is a no-op; a changed input is the only one redone."""

import os
import shutil

from sample_data import AV

from components.extract_clips import run
from xkd.data.cache import read_clip
from xkd.data.cache_build import read_manifest


def test_rerun_is_a_noop_and_changes_are_incremental(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("big_buck_bunny_432_433.webm", "TrumanShow_wave_f_nm_np1_fr_med_26.avi"):
        shutil.copy(AV / name, src / name)
    out = tmp_path / "out"
    first = run(str(src), str(out))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    again = run(str(src), str(out))
    assert again == first
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing rewritten

    # replace one input: only it is processed again, the other entry keeps its shard
    shutil.copy(
        AV / "SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi", src / "TrumanShow_wave_f_nm_np1_fr_med_26.avi"
    )
    third = run(str(src), str(out))
    assert third["reused_from_previous_run"] == 1 and third["ok"] == 2
    entries = {e["clip_id"]: e for e in read_manifest(out)}
    assert entries["TrumanShow_wave_f_nm_np1_fr_med_26"]["video"]["frames"] == 21  # now the 2.5 s clip
    frames, _ = read_clip(out, "big_buck_bunny_432_433")
    assert frames.shape[0] == 8

    # a removed input disappears from the manifest, and its no longer referenced shard is deleted
    os.remove(src / "big_buck_bunny_432_433.webm")
    fourth = run(str(src), str(out))
    assert fourth["inputs"] == 1 and [e["clip_id"] for e in read_manifest(out)] == [
        "TrumanShow_wave_f_nm_np1_fr_med_26"
    ]
    assert {p.name for p in out.glob("shard-*.tar")} == {read_manifest(out)[0]["shard"]}


def test_changed_parameters_rebuild(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(AV / "big_buck_bunny_432_433.webm", src / "b.webm")
    run(str(src), str(tmp_path / "out"))
    report = run(str(src), str(tmp_path / "out"), short_side=64)
    assert report["reused_from_previous_run"] == 0
    assert read_manifest(tmp_path / "out")[0]["video"]["height"] == 64
