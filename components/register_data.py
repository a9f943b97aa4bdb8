"""Register a local copy of a dataset: check it against the split lists, put it under data/raw/<dataset>/,
`dvc add` it (pointer data/raw/<dataset>.dvc for git) and `dvc push` it to the configured DVC remote.

    python -m components.register_data --dataset NAME --src FOLDER [--split N] [--link copy|hardlink]
        [--remote URL_OR_PATH] [--no-push] [--report FILE]
    make data DATASET=NAME SRC=FOLDER [REMOTE=...]

Remote: the repository's default DVC remote when one is configured (S3/GCS/Azure: data/splits/README.md);
otherwise a local-directory remote (`--remote`, `$XKD_DVC_REMOTE`, or `../xkd-dvc-remote` beside the
project) written to `.dvc/config.local`, because a local path is specific to one machine and does not
belong in the committed config.

Missing files are counted, never fatal (K400 copies always miss some); a copy holding none of the listed
files is refused, since that is nearly always the wrong folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from xkd.data.splits import DATASETS, summary_line, validate
from xkd.errors import UsageError, cli, step_parser
from xkd.log import logger
from xkd.paths import REPO

log = logger(__name__)

DVC_TIMEOUT_S = 24 * 3600  # a first push of K400 to a bucket takes hours; a hung dvc still ends


def _dvc(repo: Path, *args: str, timeout: float = DVC_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise UsageError(f"`dvc {' '.join(args)}` failed in {repo}: {' | '.join(tail)}")
    return proc


def mirror(src: Path, dest: Path, link: str = "copy") -> dict:
    """Make `dest` hold exactly the files of `src` (hidden files skipped). Unchanged files (same size and
    mtime) are left alone, so a re-run after adding a few clips copies only those."""
    if link not in ("copy", "hardlink"):
        raise UsageError(f"--link must be copy or hardlink, not {link!r}")
    copied = kept = removed = 0
    wanted: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            s = Path(dirpath) / name
            rel = s.relative_to(src)
            d = dest / rel
            wanted.add(rel)
            st = s.stat()
            if d.exists():
                dt = d.stat()
                if dt.st_size == st.st_size and int(dt.st_mtime) == int(st.st_mtime):
                    kept += 1
                    continue
                d.unlink()  # DVC leaves files read-only (or links into its cache): replace, never write through
            d.parent.mkdir(parents=True, exist_ok=True)
            if link == "hardlink":
                os.link(s, d)
            else:
                shutil.copy2(s, d)
            copied += 1
    for p in sorted(dest.rglob("*"), reverse=True):
        rel = p.relative_to(dest)
        if p.is_file() and rel not in wanted and not rel.parts[0].startswith("."):
            p.unlink()
            removed += 1
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    return {"copied": copied, "unchanged": kept, "removed": removed}


def ensure_remote(repo: Path, remote: str | None) -> str:
    """Name of the remote pushes go to; adds a local-directory default remote when none is configured."""
    current = _dvc(repo, "remote", "default", check=False).stdout.strip()
    if current and not remote:
        return current
    path = remote or os.environ.get("XKD_DVC_REMOTE") or str(repo.resolve().parent / "xkd-dvc-remote")
    if "://" not in path:
        Path(path).mkdir(parents=True, exist_ok=True)
        path = str(Path(path).resolve())
    _dvc(repo, "remote", "add", "--local", "--force", "--default", "xkd-local", path)
    return "xkd-local"


def run(
    dataset: str,
    src: str,
    *,
    repo: str | os.PathLike = REPO,
    split: int | None = None,
    link: str = "copy",
    remote: str | None = None,
    push: bool = True,
    report: str | None = None,
) -> dict:
    """Validate, mirror to data/raw/<dataset>, dvc add, dvc push. Returns a summary (also for lineage)."""
    repo, src_path = Path(repo), Path(src)
    if not dataset or "/" in dataset or dataset.startswith("."):
        raise UsageError(f"bad dataset name {dataset!r}: use a plain name such as ucf101")
    if not src_path.is_dir():
        raise UsageError(f"SRC is not a folder: {src}")
    if not (repo / ".dvc").is_dir():
        raise UsageError(f"{repo} is not a DVC project (no .dvc/); run `dvc init` there first")
    summary: dict = {"dataset": dataset, "src": str(src_path)}
    if dataset in DATASETS:
        check = validate(dataset, src_path, split)
        log.info(summary_line(check))
        if check["found"] == 0:
            raise UsageError(
                f"none of the {check['listed']} files listed for {dataset} is under {src}; "
                "is SRC the dataset's top folder?"
            )
        summary["validation"] = {
            k: check[k] for k in ("split", "listed", "found", "missing", "by_subset", "unlisted_files")
        }
        if report:
            Path(report).write_text(json.dumps({k: v for k, v in check.items() if k != "matched"}, indent=2))
    else:
        log.warning(f"no split lists for {dataset!r} (known: {', '.join(DATASETS)}); registering unchecked")
    dest = repo / "data" / "raw" / dataset
    dest.mkdir(parents=True, exist_ok=True)
    if src_path.resolve() != dest.resolve():
        summary["mirror"] = mirror(src_path, dest, link)
    _dvc(repo, "add", str(dest.relative_to(repo)))
    pointer = dest.parent / f"{dataset}.dvc"
    from xkd.tracking.lineage import dvc_recorded_md5

    summary["md5"] = (dvc_recorded_md5(dest, repo) or {}).get("md5")
    summary["pointer"] = str(pointer.relative_to(repo))
    if push:
        summary["remote"] = ensure_remote(repo, remote)
        _dvc(repo, "push", "-r", summary["remote"], summary["pointer"])
    summary["pushed"] = push
    return summary


def parser() -> argparse.ArgumentParser:
    ap = step_parser("components.register_data", __doc__)
    ap.add_argument("--dataset", required=True, help=f"dataset name ({', '.join(DATASETS)} are validated)")
    ap.add_argument("--src", required=True, help="the folder holding your copy of the dataset")
    ap.add_argument("--split", type=int, default=None, help="split list to validate against (default 1)")
    ap.add_argument(
        "--link",
        default="copy",
        choices=("copy", "hardlink"),
        help="hardlink saves space on one filesystem; then never edit files in SRC in place",
    )
    ap.add_argument("--remote", default=None, help="local folder or URL for a new default DVC remote")
    ap.add_argument("--no-push", action="store_true", help="dvc add only")
    ap.add_argument("--report", default=None, help="write the validation report (every missing file) here")
    ap.add_argument("--repo", default=str(REPO), help=argparse.SUPPRESS)
    return ap


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    s = run(
        args.dataset,
        args.src,
        repo=args.repo,
        split=args.split,
        link=args.link,
        remote=args.remote,
        push=not args.no_push,
        report=args.report,
    )
    where = f"pushed to DVC remote {s['remote']!r}" if s["pushed"] else "not pushed (--no-push)"
    print(
        f"{s['dataset']}: data/raw/{s['dataset']} md5 {s['md5']}, {where}. Commit the pointer:\n"
        f"  git add {s['pointer']} data/raw/.gitignore && git commit -m 'data: register {s['dataset']}'"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
