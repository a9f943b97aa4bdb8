"""Data lineage for MLflow: which bytes produced a run (DVC md5s, git commit, split-list and cache digests).

Every step calls, inside its active MLflow run:

    inputs = collect(datasets={"ucf101": "data/raw/ucf101"}, splits=[("ucf101", 1)],
                     caches={"ucf101-clips": "data/cache/ucf101/clips"})
    log_lineage(inputs)                     # mlflow.log_input per input + `lineage.*` run tags

and the selection step, after registering the encoder: `tag_model_version("xkd-encoder", v, inputs)`.

Digests come from content, never from mtimes: a directory's md5 is DVC's own (`dvc_data` build, the same
`<md5>.dir` that `dvc add` writes into a pointer and `dvc.lock`), computed here without DVC's state
database, because that database keys on (inode, mtime, size) and would miss an edit that keeps the mtime.
Hashing K400 (~450 GB) at every run would be slow, so `mode="auto"` hashes content below `AUTO_MAX_BYTES`
and otherwise trusts the pointer (the data was checked out from it by `dvc pull`); the record says which.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
import warnings
from pathlib import Path

import yaml

from xkd.data.cache_build import MANIFEST, REPORT, read_report
from xkd.errors import UsageError
from xkd.paths import REPO

AUTO_MAX_BYTES = 8 << 30
TAG_PREFIX = "lineage"
_DIGEST_FIELD = 36  # MLflow's SQL store keeps at most 36 characters of a dataset digest
# {commit, dirty} of the checkout when the pipeline run's parent opened, before any step touched a file; set by
# xkd.tracking.pipeline_run for the steps of that run (one process per step under dvc: read from the parent)
PIPELINE_GIT: dict = {}


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dvc_content_md5(path: str | os.PathLike) -> dict:
    """DVC's md5 of a file or directory from its content (`<md5>` or `<md5>.dir`), via dvc's hashing."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    path = Path(path)
    if not path.exists():
        raise UsageError(f"cannot hash {path}: it does not exist (run `dvc pull` or `make data` first)")
    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory(prefix="xkd-lineage-") as staging:
        # A throw-away object store: build() writes only the directory listing (.dir object) into it.
        _, meta, obj = build(HashFileDB(fs, staging), str(path.resolve()), fs, "md5")
    return {"md5": obj.hash_info.value, "size": meta.size, "nfiles": meta.nfiles}


def _rel(path: Path, repo: Path) -> str:
    try:
        return path.resolve().relative_to(repo.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def dvc_recorded_md5(path: str | os.PathLike, repo: str | os.PathLike = REPO) -> dict | None:
    """The md5 git knows for `path`: its `<path>.dvc` pointer, else a stage out/dep in `dvc.lock`."""
    path, repo = Path(path), Path(repo)
    pointer = path.parent / f"{path.name}.dvc"
    if pointer.is_file():
        out = (yaml.safe_load(pointer.read_text()) or {}).get("outs", [{}])[0]
        if out.get("md5"):
            return {
                "md5": out["md5"],
                "size": out.get("size"),
                "nfiles": out.get("nfiles"),
                "recorded_in": _rel(pointer, repo),
            }
    lock = repo / "dvc.lock"
    if lock.is_file():
        rel = _rel(path, repo)
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for kind in ("outs", "deps"):  # an output is authoritative; a dep records what a stage read
            for stage, body in stages.items():
                for entry in body.get(kind, []):
                    if entry.get("path") == rel and entry.get("md5"):
                        return {
                            "md5": entry["md5"],
                            "size": entry.get("size"),
                            "nfiles": entry.get("nfiles"),
                            "recorded_in": f"dvc.lock:{stage}.{kind}",
                        }
    return None


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def dvc_md5(path: str | os.PathLike, repo: str | os.PathLike = REPO, mode: str = "auto") -> dict:
    """DVC md5 of an input: `content` (hash the bytes), `pointer` (.dvc / dvc.lock) or `auto` (see module)."""
    if mode not in ("auto", "content", "pointer"):
        raise UsageError(f"mode must be auto, content or pointer, not {mode!r}")
    path = Path(path)
    recorded = dvc_recorded_md5(path, repo)
    use_pointer = mode == "pointer" or (
        mode == "auto" and recorded is not None and (not path.exists() or _tree_size(path) > AUTO_MAX_BYTES)
    )
    if use_pointer:
        if recorded is None:
            raise UsageError(f"{path} has no .dvc pointer and is not in dvc.lock; hash it with mode='content'")
        return {**recorded, "method": "pointer"}
    out = {**dvc_content_md5(path), "method": "content"}
    if recorded is not None:
        # A mismatch means the working copy is not what git's pointer says: worth a loud tag, not a crash.
        out.update(
            recorded_md5=recorded["md5"],
            recorded_in=recorded["recorded_in"],
            matches_recorded=recorded["md5"] == out["md5"],
        )
    return out


def pipeline_written_paths(repo: str | os.PathLike = REPO) -> list[str]:
    """Tracked files a pipeline run itself rewrites, as git glob pathspecs: dvc.lock, .gitignore files (dvc adds
    its outputs there) and every out/metrics/plots path dvc.yaml declares (`${...}` templating as `*`). A change
    to them says nothing about the code that ran, so `git_commit` leaves them out of `dirty`."""
    paths = ["dvc.lock", "**/.gitignore"]
    dvc_yaml = Path(repo) / "dvc.yaml"
    try:
        stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError):
        stages = {}
    for stage in stages.values():
        body = (stage or {}).get("do", stage) or {}  # a foreach stage keeps its body under `do`
        for kind in ("outs", "metrics", "plots"):
            for entry in body.get(kind) or []:
                for path in entry if isinstance(entry, dict) else [entry]:
                    paths.append(re.sub(r"\$\{[^}]*\}", "*", str(path)))
    return paths


def git_commit(repo: str | os.PathLike = REPO) -> dict:
    """{commit, dirty} of the project checkout; commit None outside a git work tree (e.g. a bare image).
    `dirty`: a tracked file differs from the commit, leaving out the files a pipeline run writes itself
    (`pipeline_written_paths`), so a run never calls its own checkout dirty by having run."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        excluded = [f":(exclude,glob){p}" for p in pipeline_written_paths(repo)]
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", *excluded))
    except (OSError, subprocess.SubprocessError):
        return {"commit": os.environ.get("XKD_GIT_COMMIT"), "dirty": None}
    return {"commit": commit, "dirty": dirty}


def split_digest(dataset: str, split: int | None = None) -> dict:
    """sha256 of each list file of a split and one combined digest over them (names + contents)."""
    from xkd.data.splits import _require, split_files

    files = split_files(dataset, split)
    _require(files, dataset)
    per_file = {f.name: file_sha256(f) for f in files}
    combined = hashlib.sha256("".join(f"{n} {d}\n" for n, d in sorted(per_file.items())).encode()).hexdigest()
    return {"sha256": combined, "files": per_file}


def manifest_digest(cache_dir: str | os.PathLike) -> dict:
    """sha256 of a cache's manifest.jsonl (it names every clip, its shard, offsets and input fingerprint)."""
    cache_dir = Path(cache_dir)
    manifest = cache_dir / MANIFEST
    if not manifest.is_file():
        raise UsageError(f"{cache_dir} is not a cache directory (no {MANIFEST})")
    report = read_report(cache_dir)
    return {
        "sha256": file_sha256(manifest),
        "ok": report.get("ok"),
        "inputs": report.get("inputs"),
        "rejected": len(report.get("rejected", [])),
        "report_sha256": file_sha256(cache_dir / REPORT) if (cache_dir / REPORT).is_file() else None,
    }


def cache_dataset(cache: str | os.PathLike) -> str:
    """A cache's dataset name: `data/cache/<dataset>/{clips,spectrograms}` (Contracts), else the folder's name."""
    path = Path(cache).resolve()
    return path.parent.name if path.name in ("clips", "spectrograms") else path.name


def collect(
    datasets: dict[str, str] | None = None,
    splits: list[tuple[str, int]] | None = None,
    caches: dict[str, str] | None = None,
    repo: str | os.PathLike = REPO,
    mode: str = "auto",
) -> list[dict]:
    """Lineage records: one per dataset (DVC md5), split list (sha256) and cache (manifest sha256)."""
    records = []
    for name, path in (datasets or {}).items():
        info = dvc_md5(path, repo, mode)
        records.append({"kind": "data", "name": name, "source": str(path), "digest": info["md5"], **info})
    for dataset, split in splits or []:
        info = split_digest(dataset, split)
        records.append(
            {
                "kind": "split",
                "name": f"{dataset}-split{split}",
                "digest": info["sha256"],
                "source": str(Path("data/splits") / dataset),
                **info,
            }
        )
    for name, path in (caches or {}).items():
        info = manifest_digest(path)
        records.append({"kind": "cache", "name": name, "source": str(path), "digest": info["sha256"], **info})
    return records


def tags_for(records: list[dict], repo: str | os.PathLike = REPO) -> dict[str, str]:
    """Flat `lineage.*` tags: full digests (dataset digests in MLflow are cut to 36 characters). The git state
    is the pipeline run's (`PIPELINE_GIT`, taken when its parent run opened) when a step runs inside one."""
    commit = PIPELINE_GIT if PIPELINE_GIT and Path(repo) == REPO else git_commit(repo)
    tags = {f"{TAG_PREFIX}.git_commit": str(commit["commit"]), f"{TAG_PREFIX}.git_dirty": str(commit["dirty"])}
    for r in records:
        key = re.sub(r"[^\w\-. /:]", "_", f"{TAG_PREFIX}.{r['kind']}.{r['name']}")  # what MLflow allows in a key
        tags[key] = r["digest"]
        if r["kind"] == "data":
            tags[f"{key}.method"] = r["method"]
            if "matches_recorded" in r:
                tags[f"{key}.matches_pointer"] = str(r["matches_recorded"])
    return tags


def log_lineage(records: list[dict], repo: str | os.PathLike = REPO, context: str = "input") -> dict[str, str]:
    """Log each record to the active MLflow run as an MLflow dataset (`log_input`) and set `lineage.*` tags."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    if mlflow.active_run() is None:
        raise UsageError("log_lineage needs an active MLflow run (inside `with mlflow.start_run():`)")
    for r in records:
        with warnings.catch_warnings():
            # A local path matches MLflow's two local-artifact source types, which are the same class: noise.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            source = resolve_dataset_source(str(Path(r["source"]).resolve()))
        dataset = MetaDataset(source=source, name=r["name"], digest=r["digest"][:_DIGEST_FIELD])
        mlflow.log_input(dataset, context=context, tags={"kind": r["kind"], "digest": r["digest"]})
    tags = tags_for(records, repo)
    mlflow.set_tags(tags)
    return tags


def tag_model_version(
    name: str, version: str | int, records: list[dict], repo: str | os.PathLike = REPO, client=None
) -> dict[str, str]:
    """Put the data digests (and git commit) on a registered model version, e.g. `xkd-encoder` v3."""
    from mlflow import MlflowClient

    client = client or MlflowClient()
    tags = tags_for(records, repo)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    return tags
