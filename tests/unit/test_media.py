"""xkd.data.media on real sample media (data/samples): probe, one-pass decode, and the reject codes."""

from __future__ import annotations

import numpy as np
import pytest
from sample_data import AV, ESC

from xkd.data import media

DECODE = dict(fps=8, short_side=112, sample_rate=16000, timeout_s=60)


def test_probe_reads_streams_sizes_rates_and_start_times():
    p = media.probe(AV / "R6llTwEh07w.mp4", timeout_s=30)  # MANIFEST: h264 340x256@30; aac 44100Hz 1ch
    assert (p.video.codec, p.video.width, p.video.height, p.video.index) == ("h264", 340, 256, 0)
    assert (p.audio.codec, p.audio.sample_rate, p.audio.channels, p.audio.index) == ("aac", 44100, 1, 1)
    assert p.duration_s == pytest.approx(10.1) and p.video.start_s == 0.0

    mkv = media.probe(AV / "flipping_a_pancake.mkv", timeout_s=30)
    # Matroska: no per-stream duration field (the reason the official loader drops it); the muxer's per-stream
    # DURATION tags give each stream's own; the opus track starts 7 ms before the video (its pre-skip)
    assert mkv.video.duration_s == pytest.approx(10.333) and mkv.audio.duration_s == pytest.approx(10.381)
    assert mkv.duration_s == pytest.approx(10.381)
    assert mkv.audio.start_s == pytest.approx(-0.007) and mkv.audio.codec == "opus"

    silent = media.probe(AV / "v_SoccerJuggling_g23_c01.avi", timeout_s=30)
    assert silent.audio is None and (silent.video.width, silent.video.height) == (320, 240)
    ogg = media.probe(ESC / "audio" / "1-100032-A-0.ogg", timeout_s=30)
    assert ogg.video is None and (ogg.audio.sample_rate, ogg.audio.channels) == (44100, 1)


def test_decode_resamples_frames_to_fps_and_short_side_and_audio_to_mono_16k():
    path = AV / "R6llTwEh07w.mp4"
    info = media.probe(path, timeout_s=30)
    out = media.decode(path, info, with_video=True, with_audio=True, **DECODE)
    # 10.1 s at 8 fps; 340x256 -> short side 112 keeps the aspect ratio (340 * 112 / 256 = 148.75)
    assert out.frames.dtype == np.uint8 and out.frames.shape[1:] == (112, 149, 3)
    assert abs(len(out.frames) - 10.1 * 8) <= 1
    assert len(np.unique(out.frames.reshape(len(out.frames), -1)[:, ::97], axis=0)) > 10  # real, moving content
    assert out.audio.dtype == np.int16 and out.audio.ndim == 1
    assert abs(len(out.audio) - info.audio.duration_s * 16000) <= 0.01 * 16000
    assert np.abs(out.audio.astype(np.float32)).mean() > 100  # not silence


def test_decode_of_a_stereo_webm_downmixes_and_can_skip_video():
    path = AV / "big_buck_bunny_432_433.webm"  # vp8 1280x720, vorbis stereo, 1 s
    info = media.probe(path, timeout_s=30)
    out = media.decode(path, info, with_video=False, with_audio=True, **DECODE)
    assert out.frames is None and out.audio.ndim == 1 and abs(len(out.audio) - 16000) <= 0.05 * 16000
    frames = media.decode(path, info, with_video=True, with_audio=False, **DECODE).frames
    assert frames.shape[1:] == (112, 199, 3) and abs(len(frames) - 8) <= 1


def test_reject_codes_for_files_that_cannot_become_cache_entries(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    cases = {empty: "empty_file", text: "unreadable", tmp_path / "missing.mp4": "unreadable"}
    for path, code in cases.items():
        with pytest.raises(media.MediaError) as err:
            media.probe(path, timeout_s=30)
        assert err.value.code == code and str(err.value).startswith(f"{code}: "), path
    with pytest.raises(media.MediaError) as err:
        media.probe(AV / "R6llTwEh07w.mp4", timeout_s=1e-4)  # no ffprobe finishes in 0.1 ms
    assert err.value.code == "timeout"
    with pytest.raises(media.MediaError) as err:
        media.scaled_size(0, 240, 112)  # a stream that reports no size
    assert err.value.code == "decode_error"


def test_frames_can_be_streamed_one_at_a_time_without_temp_files(tmp_path, monkeypatch):
    """decode hands each frame to a sink as it arrives (bounded memory) and writes nothing to disk."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    path = AV / "R6llTwEh07w.mp4"
    info = media.probe(path, timeout_s=30)
    whole = media.decode(path, info, with_video=True, with_audio=True, **DECODE)
    seen = []
    streamed = media.decode(path, info, with_video=True, with_audio=True, frame_sink=seen.append, **DECODE)
    assert streamed.frames is None and streamed.n_frames == len(seen) == len(whole.frames)
    assert np.array_equal(np.stack(seen), whole.frames) and np.array_equal(streamed.audio, whole.audio)
    capped = media.decode(path, info, with_video=True, with_audio=True, max_duration_s=2.0, **DECODE)
    assert len(capped.frames) == 16 and len(capped.audio) == 32000  # ffmpeg -t: the first 2 s only
    assert list(tmp_path.iterdir()) == []


def test_pillow_jpegs_equal_the_torchvision_encoder_the_cache_used(tmp_path):
    """The JPEG step moved from torchvision's encode_jpeg (which segfaults on frames libjpeg cannot store) to
    Pillow: same libjpeg settings (quality 90, 4:2:0), so the same bytes per clip-second and the same pixels."""
    import torch
    from torchvision.io import encode_jpeg

    from xkd.data.clips import encode_jpegs

    path = AV / "R6llTwEh07w.mp4"
    frames = media.decode(path, media.probe(path, timeout_s=30), with_video=True, with_audio=False, **DECODE).frames
    ours = encode_jpegs(frames, 90)
    theirs = [bytes(t.numpy()) for t in encode_jpeg([torch.from_numpy(f.copy()).permute(2, 0, 1) for f in frames], 90)]
    assert ours == theirs


def test_one_length_rule_for_every_stream():
    """Each stream must decode at least half of its own declared duration (capped), and --min-duration."""
    video = media.StreamInfo(0, "h264", 0.0, 1.5)
    audio = media.StreamInfo(1, "aac", 0.0, None)
    info = media.Probe(duration_s=10.0, video=video, audio=audio)
    assert media.expected_seconds(info, video, 600) == 1.5  # its own duration, not the file's 10 s
    assert media.expected_seconds(info, audio, 600) == 10.0  # none declared: the file's real duration
    assert media.expected_seconds(info, audio, 4.0) == 4.0 and media.truncated_to(info, 4.0) == 4.0
    assert media.truncated_to(info, 600) is None
    media.check_decoded_length("video", 1.5, 1.5, min_duration_s=1.0, min_fraction=0.5)
    for decoded, expected, code in ((0.9, 1.5, "too_short"), (4.0, 10.0, "decode_error")):
        with pytest.raises(media.MediaError) as err:
            media.check_decoded_length("audio", decoded, expected, min_duration_s=1.0, min_fraction=0.5)
        assert err.value.code == code
