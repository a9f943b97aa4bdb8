"""Official split lists: provenance (sha256 of every vendored file), the official counts, the validator."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil

import pytest
from sample_data import AV

from components.splits import main
from xkd.data.splits import SPLITS_DIR, load_split, split_files, validate
from xkd.errors import UsageError

OFFICIAL = {  # (dataset, split): {subset: count}, from each dataset's paper / release notes
    ("ucf101", 1): {"train": 9537, "test": 3783},
    ("ucf101", 2): {"train": 9586, "test": 3734},
    ("ucf101", 3): {"train": 9624, "test": 3696},
    **{("hmdb51", s): {"train": 3570, "test": 1530} for s in (1, 2, 3)},
    **{("esc50", f): {"train": 1600, "test": 400} for f in range(1, 6)},
    ("kinetics_sound", 1): {"train": 22713, "val": 1593},
}


def _counts(rows):
    out = {}
    for r in rows:
        out[r.subset] = out.get(r.subset, 0) + 1
    return out


def test_provenance_covers_every_file_with_its_sha256():
    with open(SPLITS_DIR / "PROVENANCE.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    listed = {r["path"] for r in rows}
    on_disk = {
        p.relative_to(SPLITS_DIR).as_posix()
        for p in SPLITS_DIR.rglob("*")
        if p.is_file() and p.name not in ("README.md", "PROVENANCE.tsv")
    }
    assert listed == on_disk
    for r in rows:
        data = (SPLITS_DIR / r["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r["sha256"], r["path"]
        assert len(data) == int(r["bytes"])
        assert r["source_repo"] and len(r["source_commit"]) == 40 and r["licence"]


@pytest.mark.parametrize("dataset,split", sorted(OFFICIAL))
def test_official_counts(dataset, split):
    rows = load_split(dataset, split)
    assert _counts(rows) == OFFICIAL[(dataset, split)]
    assert len({r.path for r in rows}) == len(rows)  # no file listed twice in one split


def test_class_counts_and_fold_structure():
    assert len({r.label for r in load_split("ucf101", 1)}) == 101
    assert len(split_files("hmdb51", 1)) == 51 and len({r.label for r in load_split("hmdb51", 2)}) == 51
    assert len({r.label for r in load_split("kinetics_sound")}) == 32
    # ESC-50: every clip is the test clip of exactly one fold, 8 per class per fold.
    tests = [{r.path for r in load_split("esc50", f) if r.subset == "test"} for f in range(1, 6)]
    assert len(set().union(*tests)) == 2000 and sum(map(len, tests)) == 2000
    fold1 = [r for r in load_split("esc50", 1) if r.subset == "test"]
    assert {sum(1 for r in fold1 if r.label == c) for c in {r.label for r in fold1}} == {8}


def test_ucf_train_and_test_groups_are_disjoint():
    # The official protocol splits by group (gNN): no group is in both train and test of a split.
    rows = load_split("ucf101", 1)
    group = lambda r: (r.label, r.path.rsplit("_", 2)[-2])  # noqa: E731
    train = {group(r) for r in rows if r.subset == "train"}
    test = {group(r) for r in rows if r.subset == "test"}
    assert train and test and not train & test


def test_validator_counts_missing_files_without_crashing(tmp_path):
    # A "copy" of UCF101 with only the two real UCF clips of the samples; one in the official folder
    # layout, one flat with different case (matched by stem), and a stray file.
    (tmp_path / "SoccerJuggling").mkdir()
    shutil.copy(AV / "v_SoccerJuggling_g23_c01.avi", tmp_path / "SoccerJuggling")
    shutil.copy(AV / "v_SoccerJuggling_g24_c01.avi", tmp_path / "V_SOCCERJUGGLING_G24_C01.avi")
    (tmp_path / "notes.txt").write_text("not a clip")
    report = validate("ucf101", tmp_path, 1)
    assert report["listed"] == 13320 and report["found"] == 2 and report["missing"] == 13318
    assert report["by_subset"]["train"] == {"listed": 9537, "found": 2, "missing": 9535}
    assert report["by_subset"]["test"]["found"] == 0
    assert report["unlisted_files"] == 1
    assert len(report["missing_files"]) == 13318
    assert "SoccerJuggling/v_SoccerJuggling_g23_c01.avi" in report["matched"]


def test_validate_cli(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert (
        main(["validate", "--dataset", "hmdb51", "--root", str(AV), "--split", "3", "--json", str(out), "--show", "1"])
        == 0
    )
    report = json.loads(out.read_text())
    # RATRACE/SchoolRules/TrumanShow (wave) are HMDB51 clips, all three used in split 3 (SchoolRules is 0 =
    # unused in splits 1-2); the Pippi clip carries an `hmdb51_` prefix its source repo added, so it misses.
    assert report["found"] == 3 and report["missing"] == 5100 - 3
    assert "3 of 5100 listed files present" in capsys.readouterr().out


def test_bad_arguments_are_usage_errors(tmp_path, capsys):
    with pytest.raises(UsageError, match="splits 1..3"):
        load_split("ucf101", 4)
    with pytest.raises(UsageError, match="unknown dataset"):
        load_split("imagenet")
    assert main(["validate", "--dataset", "esc50", "--root", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_user_provided_kinetics400_csv(tmp_path):
    with pytest.raises(UsageError, match="Kinetics-400"):
        load_split("kinetics400", splits_dir=tmp_path)
    k = tmp_path / "kinetics400"
    k.mkdir()
    (k / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "using segway,R6llTwEh07w,0,10,train\nabseiling,zzzzzzzzzzz,12,22,train\n"
    )
    (k / "val.csv").write_text("label,youtube_id,time_start,time_end,split\nusing segway,SOX5yA1l24A,299,309,val\n")
    rows = load_split("kinetics400", splits_dir=tmp_path)
    assert [r.path for r in rows][0] == "using segway/R6llTwEh07w_000000_000010.mp4"
    root = tmp_path / "copy"
    root.mkdir()
    shutil.copy(AV / "R6llTwEh07w.mp4", root / "R6llTwEh07w_000000_000010.mp4")
    report = validate("kinetics400", root, splits_dir=tmp_path)
    assert (report["found"], report["missing"]) == (1, 2)
