"""Where a user's `--model` points: a registered model (`models:/NAME@ALIAS`, `models:/NAME/VERSION`) or an
encoder bundle directory. One function, `resolve_bundle`, so the steps that use an encoder never care which.

A registered version is downloaded whole and the bundle is found inside it by its files: today a version's
artifacts are the bundle itself (xkd.tracking.registry), a pyfunc model carries it as one of its artifacts;
both are the same search.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from xkd.errors import UsageError

MODALITIES = ("video", "audio")
ROLES = ("student", "teacher")
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


def bundle_dirs(root: Path) -> list[Path]:
    """Folders under `root` (itself included) holding a bundle: config.json beside encoder files."""
    found = []
    for cfg in sorted(Path(root).rglob("config.json")):
        if any((cfg.parent / f"{m}_{r}.safetensors").is_file() for m in MODALITIES for r in ROLES):
            found.append(cfg.parent)
    return found


def resolve_bundle(model: str, dst: str | Path | None = None) -> tuple[Path, dict[str, str]]:
    """(bundle directory, the registered version's tags or {} for a directory) for `--model`.
    A `models:/` URI is downloaded into `dst` (default: a new temp dir) from the tracking store
    (MLFLOW_TRACKING_URI, default the project's mlflow.db)."""
    if not model.startswith("models:/"):
        path = Path(model)
        found = bundle_dirs(path) if path.is_dir() else []
        if path in found or len(found) == 1:  # the bundle itself, or a folder holding one (outputs/select)
            return (path if path in found else found[0]), {}
        raise UsageError(
            f"--model {model}: not an encoder bundle directory (config.json + {{video,audio}}_{{student,teacher}}"
            f".safetensors{f'; it holds {len(found)} bundles' if found else ''}) nor a models:/NAME@ALIAS URI"
        )
    m = _MODELS_URI.match(model)
    if m is None:
        raise UsageError(f"--model {model}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    import mlflow
    from mlflow.exceptions import MlflowException

    from xkd.tracking import runs as tracking

    tracking.connect()  # the project's store, checked: a dead one is one line, not a stack of retries
    client = mlflow.MlflowClient()
    try:
        if m["alias"]:
            mv = client.get_model_version_by_alias(m["name"], m["alias"])
        else:
            mv = client.get_model_version(m["name"], m["version"])
    except MlflowException:
        raise UsageError(
            f"--model {model}: no such registered model version in {tracking.redact(mlflow.get_tracking_uri())}; "
            "run components.select_checkpoint first, or pass a bundle directory"
        ) from None
    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix=f"{m['name']}-"))
    dst.mkdir(parents=True, exist_ok=True)
    root = Path(mlflow.artifacts.download_artifacts(f"models:/{m['name']}/{mv.version}", dst_path=str(dst)))
    found = bundle_dirs(root)
    if len(found) != 1:
        raise UsageError(
            f"--model {model}: version {mv.version} holds {len(found)} encoder bundles (expected one) in {root}"
        )
    return found[0], dict(mv.tags)
