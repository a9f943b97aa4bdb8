"""AV-Digits: a small audio-visual corpus with a known shared cause, for checking that pretraining learns.

Each clip shows ONE handwritten digit (scikit-learn's 8x8 `load_digits`, smoothly upscaled) drifting over a dark,
faintly noisy 128x128 frame, while the audio track says that digit (Free Spoken Digit Dataset recordings) a few
times over low white noise. The digit brightens exactly while it is spoken, so the two modalities share both
content (which digit) and timing. `pairing="mismatched"` says a different digit than the one shown (an ablation:
the modalities then share only timing).

Layout written by `build` (see data/avdigits_README.md, the corpus card):
    DIR/pretrain/clip_{n:05d}.mp4        h264 + aac, no label anywhere in the name or the container
    DIR/pretrain_labels.csv              ground truth for analysis only (outside pretrain/)
    DIR/digits-video/{d}_{image:04d}_{k}.mp4   video only, the held-out half of the images, for probing
    DIR/digits_video_labels.csv          the same facts as the names, plus the brightening times
    DIR/build.json                       args, tool versions, sha256 of every file: a rerun with equal args is a no-op

Every random choice comes from numpy generators seeded by (seed, clip): the same seed gives byte-identical files
whatever the number of workers (libx264 runs single-threaded, both encoders with bitexact flags).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import shutil
import time
import wave
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import ffmpeg
import numpy as np

from xkd.errors import UsageError
from xkd.log import progress

FPS = 25
SIZE = 128
DURATION_S = 4.5  # the pipeline's views take 4 s windows; the extra half second leaves room for the crop
N_FRAMES = int(np.ceil(DURATION_S * FPS))  # 113 frames: the video covers the whole audio track
SAMPLE_RATE = 16_000
FSDD_RATE = 8_000
NOISE_DBFS = -45.0  # RMS of the background white noise
PEAK = 0.8  # every utterance is peak-normalised to this before mixing
EDGE_S = 0.1  # no utterance starts before / ends after this margin
GAP_S = 0.15  # minimum silence between two utterances
DIGIT_PX = (44, 64)  # smallest/largest side of the upscaled 8x8 digit image
BACKGROUND_Y = 20.0  # luma of the dark background (video range is 16-235)
QUIET_GAIN, SPOKEN_GAIN = 80.0, 210.0  # luma added by a full-ink pixel: silent vs while the digit is spoken
IMAGE_SPLIT = 1797 // 2  # load_digits images below this index feed pretraining, the rest digits-video
MAX_UTTERANCES = 5  # 6 utterances of the longer recordings do not fit in 4.5 s
BUILDER = "build_avdigits/1"
X264 = {"vcodec": "libx264", "preset": "veryfast", "crf": 23, "threads": 1, "pix_fmt": "yuv420p"}
AAC = {"acodec": "aac", "aac_coder": "fast", "audio_bitrate": "48k", "ar": SAMPLE_RATE, "ac": 1}


@dataclass(frozen=True)
class Recording:
    filename: str
    digit: int
    speaker: str
    index: int
    split: str
    frames: int  # samples at 8 kHz


@dataclass(frozen=True)
class ClipPlan:
    """Everything a worker needs to render one clip; nothing here depends on the worker that renders it."""

    relpath: str  # relative to the output folder
    rng_key: tuple[int, ...]
    image: tuple[tuple[float, ...], ...]  # the 8x8 digit image, values 0..16
    onsets: tuple[int, ...]  # utterance start/end, in 16 kHz samples
    offsets: tuple[int, ...]
    recordings: tuple[str, ...] = ()  # absolute wav paths; empty -> no audio stream
    background: str = "noisy"  # "noisy": faint video noise + NOISE_DBFS audio noise; "clean": flat frame, silence
    digit_px: tuple[int, int] = DIGIT_PX


# ---------------------------------------------------------------- inputs


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_fsdd(root: Path) -> tuple[list[Recording], str]:
    """The FSDD rows of `root`, checked against its SHA256.tsv; also return SHA256.tsv's own sha256 (the
    corpus fingerprint recorded in build.json)."""
    labels, sums = root / "fsdd_labels.csv", root / "SHA256.tsv"
    if not labels.is_file() or not sums.is_file():
        raise UsageError(f"--fsdd {root}: not an FSDD folder (needs fsdd_labels.csv, SHA256.tsv, recordings/)")
    try:
        expected = dict(line.split("\t") for line in sums.read_text().split("\n") if line.strip())
        with labels.open(newline="") as fh:
            table = [
                (row["filename"], int(row["digit"]), row["speaker"], int(row["index"]), row["split"])
                for row in csv.DictReader(fh)
            ]
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(f"--fsdd {root}: malformed SHA256.tsv or fsdd_labels.csv ({err})") from None
    rows = []
    for filename, digit, speaker, index, split in table:
        path = root / "recordings" / filename
        if not path.is_file() or _sha256(path) != expected.get(filename):
            raise UsageError(f"--fsdd {root}: {filename} is missing or does not match SHA256.tsv")
        with wave.open(str(path)) as w:
            if w.getframerate() != FSDD_RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
                raise UsageError(f"--fsdd {root}: {filename} is not 8 kHz mono 16-bit PCM")
            frames = w.getnframes()
        rows.append(Recording(filename, digit, speaker, index, split, frames))
    if not rows:
        raise UsageError(f"--fsdd {root}: fsdd_labels.csv lists no recordings")
    return rows, _sha256(sums)


def load_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits: (1797, 8, 8) float images (0..16) and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


# ---------------------------------------------------------------- planning


def place_utterances(lengths: list[int], rng: np.random.Generator) -> list[int] | None:
    """Random non-overlapping start samples for utterances of `lengths` samples (in that order) inside the clip,
    each placement equally likely; None when they do not fit."""
    total = int(DURATION_S * SAMPLE_RATE)
    edge, gap = int(EDGE_S * SAMPLE_RATE), int(GAP_S * SAMPLE_RATE)
    slack = total - 2 * edge - sum(lengths) - gap * (len(lengths) - 1)
    if slack < 0:
        return None
    shifts = np.sort(rng.integers(0, slack + 1, size=len(lengths)))
    starts, cursor = [], edge
    for length, shift in zip(lengths, shifts, strict=True):
        starts.append(cursor + int(shift))
        cursor += length + gap
    return starts


def _pick_fitting(pool: list[Recording], k: int, rng: np.random.Generator) -> tuple[list[Recording], list[int]]:
    """k different recordings from `pool` whose utterances fit in one clip, and their start samples."""
    if len(pool) < k:
        raise UsageError(f"--utterances {k}: only {len(pool)} training recordings for one digit and speaker")
    for _ in range(100):
        chosen = [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]
        starts = place_utterances([2 * r.frames for r in chosen], rng)  # 8 -> 16 kHz doubles the length
        if starts is not None:
            return chosen, starts
    raise UsageError(f"--utterances {k}: the recordings do not fit in a {DURATION_S} s clip; use fewer")


def plan_pretrain(
    recordings: list[Recording],
    fsdd_root: Path,
    images: np.ndarray,
    targets: np.ndarray,
    *,
    seed: int,
    clips: int,
    pairing: str,
    utterances: int,
    digits: list[int],
) -> tuple[list[ClipPlan], list[dict]]:
    """Plans and ground-truth rows of the pretrain clips: balanced over digits (clip n says digit
    digits[n % len(digits)]) and, within a digit, over speakers; FSDD training split and first-half images only."""
    rng = np.random.default_rng([seed, 1])
    train = [r for r in recordings if r.split == "train"]
    speakers = sorted({r.speaker for r in train})
    by_digit_speaker = {(r.digit, r.speaker): [] for r in train}
    for r in train:
        by_digit_speaker[(r.digit, r.speaker)].append(r)
    # each digit's first-half images in a seeded order, cycled so every image is used about equally often
    image_cycle = {d: list(rng.permutation(np.flatnonzero((targets[:IMAGE_SPLIT] == d)))) for d in digits}
    used = dict.fromkeys(digits, 0)
    plans, rows = [], []
    for n in range(clips):
        digit_audio = digits[n % len(digits)]
        speaker = speakers[(n // len(digits)) % len(speakers)]
        digit_video = digit_audio
        if pairing == "mismatched":
            digit_video = int(rng.choice([d for d in digits if d != digit_audio]))
        cycle = image_cycle[digit_video]
        image = int(cycle[used[digit_video] % len(cycle)])
        used[digit_video] += 1
        pool = by_digit_speaker.get((digit_audio, speaker), [])
        chosen, starts = _pick_fitting(pool, utterances, rng)
        name = f"clip_{n:05d}.mp4"
        offsets = [s + 2 * r.frames for s, r in zip(starts, chosen, strict=True)]
        plans.append(
            ClipPlan(
                relpath=f"pretrain/{name}",
                rng_key=(seed, 2, n),
                image=tuple(map(tuple, images[image].tolist())),
                onsets=tuple(starts),
                offsets=tuple(offsets),
                recordings=tuple(str(fsdd_root / "recordings" / r.filename) for r in chosen),
            )
        )
        rows.append(
            {
                "clip": name,
                "digit_audio": digit_audio,
                "digit_video": digit_video,
                "speaker": speaker,
                "recordings": ";".join(r.filename for r in chosen),
                "image": image,
                "onsets_s": ";".join(f"{s / SAMPLE_RATE:.4f}" for s in starts),
                "offsets_s": ";".join(f"{e / SAMPLE_RATE:.4f}" for e in offsets),
            }
        )
    return plans, rows


def plan_digits_video(
    recordings: list[Recording],
    images: np.ndarray,
    targets: np.ndarray,
    *,
    seed: int,
    per_image: int,
    max_images: int | None,
    utterances: int,
    digits: list[int],
) -> tuple[list[ClipPlan], list[dict]]:
    """Plans of the video-only probe clips: the second half of the images, `per_image` clips each. The digit
    brightens over intervals drawn like pretraining's (lengths of training recordings of that digit), so the probe
    sees the pretraining video distribution; no audio is written."""
    train = [r for r in recordings if r.split == "train"]
    held_out = [i for i in range(IMAGE_SPLIT, len(targets)) if int(targets[i]) in digits]
    # interleave digits (rank within digit, then digit) so a --video-images limit stays balanced
    rank: dict[int, int] = {}
    order = []
    for i in held_out:
        d = int(targets[i])
        order.append((rank.get(d, 0), d, i))
        rank[d] = rank.get(d, 0) + 1
    chosen_images = [i for _, _, i in sorted(order)][: max_images if max_images is not None else None]
    plans, rows = [], []
    for image in sorted(chosen_images):
        digit = int(targets[image])
        pool = [r for r in train if r.digit == digit]
        rng = np.random.default_rng([seed, 3, image])  # per image: a clip does not depend on --video-images
        for k in range(per_image):
            chosen, starts = _pick_fitting(pool, utterances, rng)
            offsets = [s + 2 * r.frames for s, r in zip(starts, chosen, strict=True)]
            name = f"{digit}_{image:04d}_{k}.mp4"
            plans.append(
                ClipPlan(
                    relpath=f"digits-video/{name}",
                    rng_key=(seed, 4, image, k),
                    image=tuple(map(tuple, images[image].tolist())),
                    onsets=tuple(starts),
                    offsets=tuple(offsets),
                )
            )
            rows.append(
                {
                    "file": name,
                    "digit": digit,
                    "image": image,
                    "k": k,
                    "onsets_s": ";".join(f"{s / SAMPLE_RATE:.4f}" for s in starts),
                    "offsets_s": ";".join(f"{e / SAMPLE_RATE:.4f}" for e in offsets),
                }
            )
    return plans, rows


# ---------------------------------------------------------------- rendering


def _bilinear_weights(coords: np.ndarray, size: int) -> np.ndarray:
    """(T, P) source coordinates into a zero-padded axis of `size` -> (T, P, size) bilinear weights."""
    coords = np.clip(coords, 0.0, size - 1 - 1e-6)
    low = np.floor(coords).astype(np.int64)
    frac = coords - low
    weights = np.zeros(coords.shape + (size,))
    np.put_along_axis(weights, low[..., None], (1 - frac)[..., None], axis=-1)
    np.put_along_axis(weights, low[..., None] + 1, frac[..., None], axis=-1)
    return weights


def _smooth_path(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """A sum of two low-frequency sinusoids (0.08-0.35 Hz) scaled into [-1, 1]."""
    freq = rng.uniform(0.08, 0.35, size=2)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    weight = rng.uniform(0.3, 1.0, size=2)
    weight /= weight.sum()
    return (weight[:, None] * np.sin(2 * np.pi * freq[:, None] * t[None] + phase[:, None])).sum(0)


def spoken_mask(onsets, offsets, n_frames: int = N_FRAMES) -> np.ndarray:
    """True for the frames whose display time falls inside an utterance (shared timing of both modalities)."""
    t = np.arange(n_frames) / FPS * SAMPLE_RATE
    mask = np.zeros(n_frames, dtype=bool)
    for start, end in zip(onsets, offsets, strict=True):
        mask |= (t >= start) & (t < end)
    return mask


def render_luma(plan: ClipPlan, rng: np.random.Generator) -> np.ndarray:
    """(N_FRAMES, SIZE, SIZE) uint8 luma: the digit moving along a smooth random path, scale varying slowly,
    brighter while spoken, over a dark background with faint noise."""
    t = np.arange(N_FRAMES) / FPS
    lo, hi = plan.digit_px
    mid, swing = rng.uniform(lo + 4, hi - 4), rng.uniform(2, 4)
    side = mid + swing * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t + rng.uniform(0, 2 * np.pi))
    reach = (SIZE - side.max()) / 2 - 1  # keep the whole image box inside the frame
    cx = SIZE / 2 + reach * _smooth_path(rng, t)
    cy = SIZE / 2 + reach * _smooth_path(rng, t)
    # inverse mapping: output pixel centre -> coordinate in the image padded by one zero pixel on each side
    pix = np.arange(SIZE) + 0.5
    src_x = (pix[None] - cx[:, None]) / side[:, None] * 8 + 3.5 + 1
    src_y = (pix[None] - cy[:, None]) / side[:, None] * 8 + 3.5 + 1
    padded = np.pad(np.asarray(plan.image) / 16.0, 1)
    # bilinear resampling is separable: rows then columns, two small batched matmuls per clip
    wy, wx = _bilinear_weights(src_y, 10).astype(np.float32), _bilinear_weights(src_x, 10).astype(np.float32)
    ink = (wy @ padded.astype(np.float32)) @ wx.transpose(0, 2, 1)
    gain = np.where(spoken_mask(plan.onsets, plan.offsets), SPOKEN_GAIN, QUIET_GAIN).astype(np.float32)
    ink *= gain[:, None, None]
    ink += BACKGROUND_Y + 0.5  # + 0.5 then truncation: rounding
    luma = ink.astype(np.uint8)
    if plan.background == "clean":
        return np.clip(luma, 16, 235, out=luma)
    # faint noise, cheaply: two 3-bit fields of random bytes summed, a triangular -7..7 (std 3.2 luma levels)
    noise = np.frombuffer(rng.bytes(luma.size), dtype=np.uint8).reshape(luma.shape)
    luma += (noise & 7) + ((noise >> 3) & 7)  # at most 20 + 210 + 14 = 244: no uint8 overflow
    luma -= 7
    return np.clip(luma, 16, 235, out=luma)


def _read_wav(path: str) -> np.ndarray:
    with wave.open(path) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


def mix_audio(plan: ClipPlan, rng: np.random.Generator) -> np.ndarray:
    """The clip's 16 kHz mono int16 track: white noise at NOISE_DBFS plus each utterance, resampled from 8 kHz
    and peak-normalised, at its planned start."""
    import torch
    import torchaudio.functional as taf

    torch.set_num_threads(1)
    total = int(DURATION_S * SAMPLE_RATE)
    # clean: digital silence between utterances (masked reconstruction cannot learn noise patches)
    track = np.zeros(total) if plan.background == "clean" else rng.normal(0, 10 ** (NOISE_DBFS / 20), total)
    for path, start, end in zip(plan.recordings, plan.onsets, plan.offsets, strict=True):
        speech = taf.resample(torch.from_numpy(_read_wav(path)), FSDD_RATE, SAMPLE_RATE).numpy().astype(np.float64)
        assert len(speech) == end - start, (path, len(speech), end - start)
        peak = np.abs(speech).max()
        track[start:end] += speech * (PEAK / peak if peak > 0 else 0.0)
    return np.clip(np.rint(track * 32767), -32768, 32767).astype("<i2")


def _write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())


def encode_batch(jobs: list[tuple[Path, np.ndarray, np.ndarray | None]], tmp_dir: Path) -> None:
    """Write one mp4 per (path, luma, pcm) job: H.264 yuv420p 25 fps, plus AAC 16 kHz mono when pcm is given;
    no metadata tags. One ffmpeg process encodes the whole batch (each output has its own encoders, so the bytes
    equal a one-clip run): starting ffmpeg costs ~0.1 s of CPU, as much as encoding a clip."""
    chroma = np.full((N_FRAMES, 2 * (SIZE // 2) * (SIZE // 2)), 128, dtype=np.uint8)
    temps, outputs = [], []
    try:
        for path, luma, pcm in jobs:
            yuv = tmp_dir / (path.stem + ".yuv")
            yuv.write_bytes(np.concatenate([luma.reshape(N_FRAMES, -1), chroma], axis=1).tobytes())
            temps.append(yuv)
            streams = [ffmpeg.input(str(yuv), format="rawvideo", pix_fmt="yuv420p", s=f"{SIZE}x{SIZE}", framerate=FPS)]
            codecs = dict(X264)
            if pcm is not None:
                wav = tmp_dir / (path.stem + ".wav")
                _write_wav(wav, pcm)
                temps.append(wav)
                streams.append(ffmpeg.input(str(wav)).audio)
                codecs.update(AAC, **{"flags:a": "+bitexact"})
            # bitexact: no encoder version strings; map_metadata -1: no tags copied from the inputs
            outputs.append(
                ffmpeg.output(
                    *streams, str(path), map_metadata=-1, fflags="+bitexact", **{"flags:v": "+bitexact"}, **codecs
                )
            )
        cmd = ffmpeg.merge_outputs(*outputs).global_args("-hide_banner", "-loglevel", "error", "-nostdin")
        cmd.run(capture_stdout=True, capture_stderr=True, overwrite_output=True)
    except ffmpeg.Error as err:
        tail = (err.stderr or b"").decode("utf-8", "replace").strip()[-400:]
        raise RuntimeError(f"ffmpeg failed writing {jobs[0][0].name}..: {tail}") from None
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def render_batch(plans: list[ClipPlan], root: str) -> list[tuple[str, str, int]]:
    """Render and encode planned clips under `root`; return (relpath, sha256, bytes) of each."""
    jobs = []
    for plan in plans:
        rng = np.random.default_rng(list(plan.rng_key))
        luma = render_luma(plan, rng)
        pcm = mix_audio(plan, rng) if plan.recordings else None
        jobs.append((Path(root) / plan.relpath, luma, pcm))
    encode_batch(jobs, Path(root) / "tmp")
    results = []
    for path, _, _ in jobs:
        data = path.read_bytes()
        results.append((str(path.relative_to(root)), hashlib.sha256(data).hexdigest(), len(data)))
    return results


# ---------------------------------------------------------------- build


def tool_versions() -> dict:
    """What the output bytes depend on besides the args (metadata lookups: importing torch here would be slow)."""
    from importlib.metadata import version

    return {
        "builder": BUILDER,
        "ffmpeg": ffmpeg_version(),
        **{pkg: version(pkg) for pkg in ("scikit-learn", "numpy", "torch", "torchaudio")},
    }


def ffmpeg_version() -> str:
    import subprocess

    out = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0] if out else "unknown"


def _write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def up_to_date(out: Path, record: dict) -> bool:
    """True when `out` holds a complete build of exactly these args/versions/inputs, every file intact."""
    try:
        old = json.loads((out / "build.json").read_text())
    except (OSError, ValueError):
        return False
    if {k: old.get(k) for k in ("args", "versions", "fsdd_sha256")} != record:
        return False
    files = old.get("files") or {}
    return all((out / rel).is_file() and _sha256(out / rel) == digest for rel, digest in files.items())


MARKER = ".avdigits-output"
OUTPUTS = ("pretrain", "digits-video", "pretrain_labels.csv", "digits_video_labels.csv", "build.json")


def build(
    fsdd: str,
    output: str,
    *,
    seed: int,
    clips: int,
    pairing: str,
    utterances: int,
    video_clips_per_image: int,
    video_images: int | None,
    digits: list[int],
    workers: int,
    background: str = "noisy",
    digit_px: tuple[int, int] = DIGIT_PX,
) -> dict:
    """Build the corpus into `output` (see the module docstring); return a summary dict."""
    out, root = Path(output), Path(fsdd)
    args = {
        "seed": seed,
        "clips": clips,
        "pairing": pairing,
        "utterances": utterances,
        "digits": digits,
        "video_clips_per_image": video_clips_per_image,
        "video_images": video_images,
        "background": background,
        "digit_px": list(digit_px),
    }
    recordings, fingerprint = load_fsdd(root)
    record = {"args": args, "versions": tool_versions(), "fsdd_sha256": fingerprint}
    if up_to_date(out, record):
        return {"output": str(out), "up_to_date": True, "clips": 0, "seconds": 0.0, "bytes": 0}
    ours = (out / "build.json").exists() or (out / MARKER).exists()
    for name in ("pretrain", "digits-video"):
        if not ours and (out / name).exists() and any((out / name).iterdir()):
            raise UsageError(f"--output {out}: {name}/ exists but was not written by this builder; pick another")
    images, targets = load_images()
    plans, labels = plan_pretrain(
        recordings,
        root.resolve(),
        images,
        targets,
        seed=seed,
        clips=clips,
        pairing=pairing,
        utterances=utterances,
        digits=digits,
    )
    video_plans, video_labels = plan_digits_video(
        recordings,
        images,
        targets,
        seed=seed,
        per_image=video_clips_per_image,
        max_images=video_images,
        utterances=utterances,
        digits=digits,
    )
    plans = [dataclasses.replace(p, background=background, digit_px=tuple(digit_px)) for p in plans + video_plans]
    stage = out / ".building"  # rendered here, then moved into place: an interrupted build leaves no half output
    shutil.rmtree(stage, ignore_errors=True)
    for sub in ("pretrain", "digits-video", "tmp"):
        (stage / sub).mkdir(parents=True)
    started = time.monotonic()
    results = _render_all(plans, stage, workers)
    (stage / "tmp").rmdir()
    _write_csv(stage / "pretrain_labels.csv", labels)
    _write_csv(stage / "digits_video_labels.csv", video_labels)
    files = {rel: digest for rel, digest, _ in sorted(results)}
    for name in ("pretrain_labels.csv", "digits_video_labels.csv"):
        files[name] = _sha256(stage / name)
    (stage / "build.json").write_text(json.dumps({**record, "files": files}, indent=1, sort_keys=True) + "\n")
    (out / MARKER).touch()  # the folder is ours even if the swap below is interrupted
    for name in reversed(OUTPUTS):  # build.json out first, in last: its presence marks a complete build
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        target.unlink(missing_ok=True)
    for name in OUTPUTS:
        (stage / name).rename(out / name)
    stage.rmdir()
    seconds = time.monotonic() - started
    return {
        "output": str(out),
        "up_to_date": False,
        "clips": len(plans),
        "pretrain": len(labels),
        "digits_video": len(video_labels),
        "seconds": seconds,
        "bytes": sum(b for *_, b in results),
        "workers": workers,
    }


BATCH = 8  # clips per ffmpeg process


def _render_all(plans: list[ClipPlan], stage: Path, workers: int) -> list[tuple[str, str, int]]:
    batches = [plans[i : i + BATCH] for i in range(0, len(plans), BATCH)]
    bar = progress(total=len(plans), desc="build avdigits", unit="clip")
    results = []
    try:
        if workers == 1:
            done = map(render_batch, batches, [str(stage)] * len(batches))
            for batch in done:
                results += batch
                bar.update(len(batch))
        else:
            # spawn: workers must not inherit the parent's torch/OpenMP thread pools
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                for batch in pool.map(render_batch, batches, [str(stage)] * len(batches)):
                    results += batch
                    bar.update(len(batch))
    finally:
        bar.close()
    return results
