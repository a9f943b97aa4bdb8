"""xkd.tracking.registry on a temporary sqlite store with a real tiny encoder bundle."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import pytest

import model
from xkd.errors import UsageError
from xkd.tracking import registry
from xkd.tracking import runs as tracking


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Two selections (two runs) registered in one store: versions 1 and 2."""
    root = tmp_path_factory.mktemp("registry")
    bundle = root / "bundle"
    model.export_bundle(model.build(model.preset("tiny")), bundle)
    (bundle / "notes.txt").write_text("not part of the bundle")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv(tracking.PARENT_ENV, raising=False)
        tracking.connect()
        parent = tracking.parent_run_id(outputs_dir=root / "outputs")
        versions, runs = [], []
        for i in range(2):
            with tracking.step_run("select_checkpoint", parent) as run:
                versions.append(
                    registry.register_encoder(bundle, run.info.run_id, tags={"selection.rule": "val_loss", "round": i})
                )
                runs.append(run.info.run_id)
        yield {"client": mlflow.MlflowClient(uri), "bundle": bundle, "versions": versions, "runs": runs, "root": root}


def _all_artifacts(client, run_id, path=""):
    for a in client.list_artifacts(run_id, path):
        yield from _all_artifacts(client, run_id, a.path) if a.is_dir else [a.path]


def test_versions_and_alias(registered):
    client = registered["client"]
    assert registered["versions"] == [1, 2]
    champ = client.get_model_version_by_alias("xkd-encoder", "champion")
    assert int(champ.version) == 2 and champ.run_id == registered["runs"][1]
    assert champ.current_stage in (None, "None")  # aliases, never stages
    assert champ.tags["selection.rule"] == "val_loss" and champ.tags["round"] == "1"
    assert champ.tags["bundle.preset"] == "tiny" and champ.tags["bundle.format"] == "xkd-encoder/1"
    assert len([k for k in champ.tags if k.startswith("bundle.sha256.")]) == 5


def test_artifacts_are_the_safetensors_bundle_and_no_pickle(registered):
    client = registered["client"]
    for run_id in registered["runs"]:
        files = sorted(_all_artifacts(client, run_id))
        assert files == sorted(f"encoder/{f}" for f in registry.BUNDLE_FILES)  # notes.txt stayed out
        assert not any(f.endswith((".pkl", ".pickle")) for f in files)
    champ = client.get_model_version_by_alias("xkd-encoder", "champion")
    assert champ.source.endswith(f"{registered['runs'][1]}/artifacts/encoder")


def test_load_champion_loads_with_model_load_encoder(registered, tmp_path):
    out = registry.load_champion(dst=tmp_path / "champ")
    assert out == tmp_path / "champ"
    assert sorted(p.name for p in out.iterdir()) == sorted(registry.BUNDLE_FILES)
    assert not list(out.rglob("*.pkl"))
    enc = model.load_encoder(out / "video_student.safetensors")
    ref = model.load_encoder(registered["bundle"] / "video_student.safetensors")
    assert enc.bundle_meta["modality"] == "video" and enc.bundle_meta["preset"] == "tiny"
    for (k, a), (_, b) in zip(enc.state_dict().items(), ref.state_dict().items()):
        assert a.equal(b), k


def test_load_champion_errors(registered, tmp_path):
    client = registered["client"]
    with pytest.raises(UsageError, match="has alias 'nope'"):
        registry.load_champion(alias="nope", dst=tmp_path / "a")
    # a modified artifact-store copy is caught by the digest tags
    client.set_registered_model_alias("xkd-encoder", "old", "1")
    src = Path(unquote(urlparse(client.get_model_version("xkd-encoder", "1").source).path))
    (src / "config.json").write_text("{}\n")
    with pytest.raises(UsageError, match="sha256 differs"):
        registry.load_champion(alias="old", dst=tmp_path / "b")


def test_register_rejects_incomplete_bundle(registered, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(registered["bundle"], broken)
    (broken / "audio_teacher.safetensors").unlink()
    with pytest.raises(UsageError, match="missing audio_teacher.safetensors"):
        registry.register_encoder(broken, registered["runs"][0])
    (broken / "audio_teacher.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UsageError, match="not a safetensors file"):
        registry.register_encoder(broken, registered["runs"][0])
