"""What the MLflow UI shows about the registered encoder, on a temporary sqlite store (the project's default kind
of store, where no tracking server links things for us): the logged model names its registered version (its page
says "xkd-encoder v1", not "Not registered"), and the registered model's description tells how to load it today,
also in a store made by an older version of the pipeline."""

from __future__ import annotations

import json

import mlflow
import pytest
import torch
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

import model
from xkd.tracking import registry
from xkd.tracking import runs as tracking

pytestmark = pytest.mark.slow  # two pyfunc models logged per test: ~15 s each on 2 cores

# what the first pipeline versions wrote: instructions for the bundle files, not for the pyfunc model
LEGACY_DESCRIPTION = "XKD encoder bundle (safetensors + config.json); load a file with model.load_encoder"


@pytest.fixture
def store(tmp_path, monkeypatch):
    torch.manual_seed(0)
    bundle = tmp_path / "bundle"
    model.export_bundle(model.build(model.preset("tiny")), bundle)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    tracking.connect()
    return {"client": mlflow.MlflowClient(uri), "bundle": bundle}


def _register(store) -> str:
    """One selection step registering the bundle; returns the logged model's id."""
    with tracking.step_run("select_checkpoint", None) as run:
        version = registry.register_encoder(store["bundle"], run.info.run_id)
    return registry.logged_model_id(store["client"].get_model_version(registry.NAME, str(version)))


def test_each_logged_model_names_the_version_registered_from_it(store):
    client = store["client"]
    first, second = _register(store), _register(store)
    assert first != second
    for model_id, version in ((first, "1"), (second, "2")):
        listed = json.loads(client.get_logged_model(model_id).tags[MLFLOW_MODEL_VERSIONS])
        assert listed == [{"name": registry.NAME, "version": version}]  # once, and only its own version


def test_the_registered_model_description_says_how_to_load_it_even_in_an_older_store(store):
    client = store["client"]
    client.create_registered_model(registry.NAME, description=LEGACY_DESCRIPTION)
    _register(store)
    description = client.get_registered_model(registry.NAME).description
    assert 'mlflow.pyfunc.load_model("models:/xkd-encoder@champion")' in description
    assert "model.load_encoder" not in description


def test_a_description_the_user_wrote_is_kept(store):
    client = store["client"]
    client.create_registered_model(registry.NAME, description="our team's encoder for the kitchen cameras")
    _register(store)
    assert client.get_registered_model(registry.NAME).description == "our team's encoder for the kitchen cameras"
