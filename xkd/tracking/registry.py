"""The selected encoder in the MLflow model registry (Contracts: model `xkd-encoder`, alias `champion`).

A version is an MLflow pyfunc model a user loads with `mlflow.pyfunc.load_model("models:/xkd-encoder@champion")`
(or serves with `mlflow models serve`): models-from-code, the model being `xkd/tracking/encoder_model.py` and its
artifact `bundle` exactly the encoder bundle -- `{video,audio}_{student,teacher}.safetensors` + `config.json`;
no pickle anywhere. The version carries a tensor signature (video [B,3,T,H,W] and audio [B,1,80,T] float32 ->
[B, D] embeddings each, shapes from the bundle's config), a description (preset, data, steps, selection
rule), each bundle file's sha256 as a tag (checked again after download), and, once evaluations have run on it,
their scores (`attach_evaluation`: `eval.<spec>.<metric>` tags; the evaluation runs link their headline metrics
to the version's logged model). The logged model lists the version registered from it (tag `mlflow.modelVersions`,
what the UI reads), and the registered model's description is the current loading instructions.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
import numpy as np
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from model.bundle import BundleError, read_metadata
from xkd.errors import UsageError
from xkd.log import logger
from xkd.tracking import runs as tracking
from xkd.tracking.lineage import file_sha256
from xkd.tracking.pipeline_run import evaluation_key

log = logger(__name__)

NAME = "xkd-encoder"
ALIAS = "champion"
ARTIFACT_PATH = "encoder"  # the logged model's name in the selection run
BUNDLE_ARTIFACT = "bundle"  # the pyfunc artifact holding the bundle's files
MODEL_CODE = Path(__file__).with_name("encoder_model.py")
BUNDLE_FILES = tuple(f"{m}_{r}.safetensors" for m in ("video", "audio") for r in ("student", "teacher")) + (
    "config.json",
)
REQUIREMENTS = ("torch", "timm", "safetensors", "numpy", "mlflow")  # what encoder_model.py and `model` import
_DIGEST_TAG = "bundle.sha256."
# the registered model's description (its page in the UI); replaced when an older pipeline's text is there
MODEL_DESCRIPTION = (
    'XKD encoder: mlflow.pyfunc.load_model("models:/xkd-encoder@champion").predict({"video": ..., "audio": ...}) '
    "-> embeddings; each version's description and signature give the shapes. The signature requires both keys: "
    "for one modality, pass the other as an empty batch (shape [0, ...])"
)
EVAL_TAG = "eval."


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


def signature(bundle_dir: str | Path, role: str = "student") -> ModelSignature:
    """Named float32 tensors in and out, with the encoders' input sizes and width from the bundle."""
    video = read_metadata(Path(bundle_dir) / "video_student.safetensors")
    audio = read_metadata(Path(bundle_dir) / "audio_student.safetensors")
    f32 = np.dtype(np.float32)
    inputs = Schema(
        [
            TensorSpec(f32, (-1, *video["input_size"]), "video"),  # [B, 3, T, H, W]
            TensorSpec(f32, (-1, *audio["input_size"]), "audio"),  # [B, 1, 80, T]
        ]
    )
    outputs = Schema(
        [TensorSpec(f32, (-1, int(video["width"])), "video"), TensorSpec(f32, (-1, int(audio["width"])), "audio")]
    )
    return ModelSignature(inputs, outputs, params=ParamSchema([ParamSpec("role", "string", role)]))


def _requirements() -> list[str]:
    pins = []
    for package in REQUIREMENTS:
        with contextlib.suppress(PackageNotFoundError):
            pins.append(f"{package}=={version(package)}")
    return pins


def register_encoder(
    bundle_dir: str | Path,
    run_id: str,
    name: str = NAME,
    alias: str = ALIAS,
    tags: dict | None = None,
    role: str | None = None,
    description: str | None = None,
) -> int:
    """Log the bundle as a pyfunc model of run `run_id` (the active run, or started for this), register it as
    a new version of `name`, point `alias` at it and return the version number. `tags` (data digests, the
    selection rule, `role`, ...) go on the version; `role` (default `tags["role"]`, else student) is the role
    the model embeds with."""
    bundle_dir = Path(bundle_dir)
    meta = _check_bundle(bundle_dir)
    role = role or (tags or {}).get("role") or "student"
    active = mlflow.active_run()
    here = active is not None and active.info.run_id == run_id
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="xkd-register-") as tmp:
        if not here:
            stack.enter_context(mlflow.start_run(run_id=run_id, nested=active is not None))
        staging = Path(tmp) / BUNDLE_ARTIFACT
        staging.mkdir()
        for f in BUNDLE_FILES:  # only the bundle's files, never whatever else sits in the directory
            shutil.copy2(bundle_dir / f, staging / f)
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT_PATH,
            python_model=str(MODEL_CODE),
            artifacts={BUNDLE_ARTIFACT: str(staging)},
            signature=signature(bundle_dir, role),
            model_config={"role": role},
            pip_requirements=_requirements(),
        )
    client = tracking._client()
    try:
        client.create_registered_model(name, description=MODEL_DESCRIPTION)
    except MlflowException:  # exists already: its description may be an older pipeline's loading instructions
        current = client.get_registered_model(name).description or ""
        # only text this pipeline wrote (all began "XKD encoder") is replaced: a user's own words stay
        if current != MODEL_DESCRIPTION and (not current or current.startswith("XKD encoder")):
            client.update_registered_model(name, description=MODEL_DESCRIPTION)
    version_tags = {f"{_DIGEST_TAG}{f}": file_sha256(bundle_dir / f) for f in BUNDLE_FILES}
    version_tags.update(
        {"bundle.format": meta["format"], "bundle.preset": meta["preset"], "bundle.variant": meta["variant"]}
    )
    version_tags.update({"role": role, **{k: str(v) for k, v in (tags or {}).items()}})
    mv = client.create_model_version(
        name, info.model_uri, run_id=run_id, tags=version_tags, description=description, model_id=info.model_id
    )
    _link_logged_model(info.model_id, name, mv.version)
    client.set_registered_model_alias(name, alias, mv.version)  # aliases, never stages (Contracts)
    return int(mv.version)


def _link_logged_model(model_id: str, name: str, version) -> None:
    """Record the version on its logged model (tag `mlflow.modelVersions`), as `mlflow.register_model` and a
    tracking server do; `MlflowClient.create_model_version` on a sqlite or file store does not, and the UI's
    logged-model page then says "Not registered". Kept once per version whoever wrote it first."""
    client = tracking._client()
    listed = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    entry = {"name": name, "version": str(version)}
    if entry not in listed:
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps([*listed, entry])})


def _bundle_in(model_dir: Path) -> Path:
    """The bundle folder of a downloaded version: the pyfunc artifact named in its MLmodel; a version registered
    before the pyfunc (the bundle files themselves) is its own folder."""
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        return model_dir
    flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("python_function", {})
    return model_dir / flavor.get("artifacts", {}).get(BUNDLE_ARTIFACT, {}).get("path", "artifacts/bundle")


def load_champion(name: str = NAME, alias: str = ALIAS, dst: str | Path | None = None) -> Path:
    """Download `name@alias` into `dst` (default: a new temp dir), verify each bundle file's sha256 against the
    version's tags, and return the directory holding the bundle's files."""
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
    out = _bundle_in(Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{mv.version}", dst_path=str(dst))))
    for key, digest in mv.tags.items():
        if key.startswith(_DIGEST_TAG) and file_sha256(out / key[len(_DIGEST_TAG) :]) != digest:
            raise UsageError(
                f"{out / key[len(_DIGEST_TAG) :]}: sha256 differs from registered version "
                f"{name}/{mv.version}; the artifact store copy is corrupt or was modified"
            )
    return out


def registered_version(bundle_dir: str | Path):
    """The model version `bundle_dir` was registered as (selection.json beside it names it), if the connected
    store holds that version with the same file digests; else None (not registered, another store, or a bundle
    that changed since)."""
    bundle_dir = Path(bundle_dir)
    try:
        registered = json.loads((bundle_dir.parent / "selection.json").read_text()).get("registered")
        mv = tracking._client().get_model_version(registered["name"], str(registered["version"]))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, MlflowException):
        return None
    digests = {k[len(_DIGEST_TAG) :]: v for k, v in mv.tags.items() if k.startswith(_DIGEST_TAG)}
    if not digests or any(
        not (bundle_dir / f).is_file() or file_sha256(bundle_dir / f) != d for f, d in digests.items()
    ):
        log.warning(f"{bundle_dir} is not the bundle of {mv.name} v{mv.version} in this store: scores not attached")
        return None
    return mv


def logged_model_id(mv) -> str | None:
    """The MLflow 3 logged model behind a version (its source `models:/m-...`; the sqlite store keeps no
    `model_id` on the version itself)."""
    if getattr(mv, "model_id", None):
        return mv.model_id
    source = mv.source or ""
    return source[len("models:/") :] if source.startswith("models:/m-") else None


def attach_evaluation(bundle_dir: str | Path, metrics: dict):
    """Put an evaluation's headline on the registered version of `bundle_dir` (tags `eval.<key>.<metric>` = mean,
    `..._std`, `..._folds`, and the evaluation's run id). Returns the version, or None when there is none."""
    mv = registered_version(bundle_dir)
    if mv is None:
        return None
    key, metric = f"{EVAL_TAG}{evaluation_key(metrics)}", metrics["metric"]
    values = {
        f"{key}.{metric}": f"{metrics['mean']:.2f}",
        f"{key}.{metric}_std": f"{metrics['std']:.2f}",
        f"{key}.{metric}_folds": str(len(metrics["folds"])),
    }
    if mlflow.active_run() is not None:
        values[f"{key}.run_id"] = mlflow.active_run().info.run_id
    client = tracking._client()
    for k, v in values.items():
        client.set_model_version_tag(mv.name, mv.version, k, v)
    return mv
