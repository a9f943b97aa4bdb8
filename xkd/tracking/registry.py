"""The selected encoder in the MLflow model registry (Contracts: model `xkd-encoder`, alias `champion`).

A version's artifacts are exactly the encoder bundle -- `{video,audio}_{student,teacher}.safetensors` +
`config.json` -- logged under the run's `encoder/` artifact folder and registered as the version's source.
No MLmodel/pyfunc wrapper: a pyfunc would store a cloudpickled python_model (or need "models from code"),
while the bundle already rebuilds itself with `model.load_encoder(file)`. MLflow 3's `register_model` only
takes a runs:/ folder that holds an MLmodel, so the version is created with `create_model_version(source=...)`.
Each file's sha256 is a version tag, checked again after download.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

from model.bundle import BundleError, read_metadata
from xkd.errors import UsageError
from xkd.tracking import runs as tracking
from xkd.tracking.lineage import file_sha256

NAME = "xkd-encoder"
ALIAS = "champion"
ARTIFACT_PATH = "encoder"
BUNDLE_FILES = tuple(f"{m}_{r}.safetensors" for m in ("video", "audio") for r in ("student", "teacher")) + (
    "config.json",
)
_DIGEST_TAG = "bundle.sha256."


def _check_bundle(bundle_dir: Path) -> dict:
    """Metadata of the video student (all four are read, so a broken file fails here, not at load time)."""
    missing = [f for f in BUNDLE_FILES if not (bundle_dir / f).is_file()]
    if missing:
        raise UsageError(f"{bundle_dir} is not an encoder bundle: missing {', '.join(missing)}")
    try:
        metas = {f: read_metadata(bundle_dir / f) for f in BUNDLE_FILES if f.endswith(".safetensors")}
    except BundleError as e:
        raise UsageError(str(e)) from None
    return metas["video_student.safetensors"]


def register_encoder(
    bundle_dir: str | Path, run_id: str, name: str = NAME, alias: str = ALIAS, tags: dict | None = None
) -> int:
    """Log the bundle as artifacts of `run_id`, create a new version of `name` from them, point `alias`
    at it and return the version number. `tags` (data digests, selection rule, ...) go on the version."""
    bundle_dir = Path(bundle_dir)
    meta = _check_bundle(bundle_dir)
    client = tracking._client()
    for f in BUNDLE_FILES:  # only the bundle's files, never whatever else sits in the directory
        client.log_artifact(run_id, str(bundle_dir / f), ARTIFACT_PATH)
    logged = {Path(a.path).name for a in client.list_artifacts(run_id, ARTIFACT_PATH)}
    if logged != set(BUNDLE_FILES):  # e.g. a re-registration from the same run with a different bundle layout
        raise UsageError(
            f"run {run_id} artifacts {ARTIFACT_PATH}/ hold {sorted(logged)}, expected exactly "
            f"{list(BUNDLE_FILES)}; register from a fresh run"
        )

    try:
        client.create_registered_model(
            name, description="XKD encoder bundle (safetensors + config.json); load a file with model.load_encoder"
        )
    except MlflowException as e:
        if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    version_tags = {f"{_DIGEST_TAG}{f}": file_sha256(bundle_dir / f) for f in BUNDLE_FILES}
    version_tags.update(
        {"bundle.format": meta["format"], "bundle.preset": meta["preset"], "bundle.variant": meta["variant"]}
    )
    version_tags.update({k: str(v) for k, v in (tags or {}).items()})
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}"
    mv = client.create_model_version(name, source, run_id=run_id, tags=version_tags)
    client.set_registered_model_alias(name, alias, mv.version)  # aliases, never stages (Contracts)
    return int(mv.version)


def load_champion(name: str = NAME, alias: str = ALIAS, dst: str | Path | None = None) -> Path:
    """Download the bundle of `name@alias` into `dst` (default: a new temp dir), verify each file's sha256
    against the version's tags, and return the directory holding the bundle's files."""
    client = tracking._client()
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        raise UsageError(
            f"no version of model {name!r} has alias {alias!r} in {mlflow.get_tracking_uri()}; "
            f"run components.select_checkpoint first"
        ) from None
    dst = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix=f"{name}-{alias}-"))
    dst.mkdir(parents=True, exist_ok=True)
    # `models:/name@alias` resolves to the version's source folder, whose files land directly in dst.
    out = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{mv.version}", dst_path=str(dst)))
    for key, digest in mv.tags.items():
        if key.startswith(_DIGEST_TAG) and file_sha256(out / key[len(_DIGEST_TAG) :]) != digest:
            raise UsageError(
                f"{out / key[len(_DIGEST_TAG) :]}: sha256 differs from registered version "
                f"{name}/{mv.version}; the artifact store copy is corrupt or was modified"
            )
    return out
