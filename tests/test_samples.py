"""The embedded real media are exactly the files their provenance manifest describes."""

import hashlib

from sample_data import SAMPLES, sample_manifest


def test_every_sample_matches_its_manifest_sha256():
    rows = sample_manifest()
    assert len(rows) == 414  # 14 videos + 400 ESC-10 clips
    for row in rows:
        data = (SAMPLES / row["path"]).read_bytes()
        assert len(data) == int(row["bytes"]), row["path"]
        assert hashlib.sha256(data).hexdigest() == row["sha256"], row["path"]


def test_every_media_file_is_in_the_manifest():
    listed = {row["path"] for row in sample_manifest()}
    on_disk = {str(p.relative_to(SAMPLES)) for d in ("av", "esc10/audio") for p in (SAMPLES / d).iterdir()}
    assert on_disk == listed


def test_licence_notes_travel_with_the_samples():
    assert (SAMPLES / "README.md").read_text().count("CC BY 3.0") >= 1
    assert (SAMPLES / "esc10" / "README_ESC-10_licensing.md").exists()
