"""Small real caches for the view-geometry tests, built once per test session (shared by several modules):

- `late_audio`: a sample clip remuxed with its audio delayed by 0.75 s (ffmpeg -itsoffset), so the
  manifest's audio start_s is ~0.73 s after the video's: windows must be aligned by time, not by index;
- `fps16`: two sample clips extracted with `--fps 16` (a configurable extraction XKD's views cannot use);
- `sr22050`: a sample clip extracted with `--sample-rate 22050`, and its spectrogram cache.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from sample_data import AV

_BUILT: dict[str, dict[str, Path]] = {}


def _once(name: str, tmp_path_factory, build) -> dict[str, Path]:
    if name not in _BUILT:
        _BUILT[name] = build(tmp_path_factory.mktemp(name))
    return _BUILT[name]


def late_audio(tmp_path_factory) -> dict[str, Path]:
    def build(root: Path) -> dict[str, Path]:
        from components.cache_spectrograms import run as cache_spectrograms
        from components.extract_clips import run as extract

        (root / "src").mkdir()
        src = AV / "R6llTwEh07w.mp4"
        cmd = ["ffmpeg", "-v", "error", "-y", "-i", str(src), "-itsoffset", "0.75", "-i", str(src)]
        subprocess.run(
            [*cmd, "-map", "0:v", "-map", "1:a", "-c", "copy", str(root / "src" / "late_audio.mp4")], check=True
        )
        extract(str(root / "src"), str(root / "clips"), workers=1)
        cache_spectrograms(str(root / "spectrograms"), clips=str(root / "clips"), workers=1)
        return {"clips": root / "clips", "spectrograms": root / "spectrograms"}

    return _once("late_audio", tmp_path_factory, build)


def fps16(tmp_path_factory) -> dict[str, Path]:
    def build(root: Path) -> dict[str, Path]:
        from components.cache_spectrograms import run as cache_spectrograms
        from components.extract_clips import run as extract

        (root / "src").mkdir()
        for name in ("big_buck_bunny_432_433.webm", "TrumanShow_wave_f_nm_np1_fr_med_26.avi"):
            (root / "src" / name).symlink_to(AV / name)
        extract(str(root / "src"), str(root / "clips"), fps=16, workers=1)
        cache_spectrograms(str(root / "spectrograms"), clips=str(root / "clips"), workers=1)
        return {"clips": root / "clips", "spectrograms": root / "spectrograms"}

    return _once("fps16", tmp_path_factory, build)


def sr22050(tmp_path_factory) -> dict[str, Path]:
    def build(root: Path) -> dict[str, Path]:
        from components.cache_spectrograms import run as cache_spectrograms
        from components.extract_clips import run as extract

        (root / "src").mkdir()
        (root / "src" / "big_buck_bunny_432_433.webm").symlink_to(AV / "big_buck_bunny_432_433.webm")
        extract(str(root / "src"), str(root / "clips"), sample_rate=22050, workers=1)
        # cache_spectrograms refuses a 22050 Hz clip cache; a spectrogram cache that records 22050 Hz can only come
        # from elsewhere (an older build, another tool): make one by relabelling a 16 kHz cache's manifest.
        cache_spectrograms(str(root / "spectrograms"), input=str(root / "src"), workers=1)
        manifest = root / "spectrograms" / "manifest.jsonl"
        manifest.write_text(manifest.read_text().replace('"sample_rate": 16000', '"sample_rate": 22050'))
        return {"clips": root / "clips", "spectrograms": root / "spectrograms"}

    return _once("sr22050", tmp_path_factory, build)
