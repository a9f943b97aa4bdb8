"""Evaluation arguments a spec carries: the preset is checked against the bundle, folds parse in one place."""

from __future__ import annotations

import pytest
import torch

import model as xkd_model
from components.evaluate import run
from xkd.errors import UsageError
from xkd.evaluation.datasets import parse_folds


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("bundle")
    xkd_model.export_bundle(xkd_model.build(xkd_model.preset("tiny")), out)
    return out


def test_a_spec_preset_that_is_not_the_bundles_is_refused(tiny_bundle, tmp_path):
    with pytest.raises(UsageError, match=r"asks for a 'base' encoder but .* holds a 'tiny' one"):
        run(str(tiny_bundle), "esc10", "svm", str(tmp_path), str(tmp_path / "out"), preset="base")


@pytest.mark.parametrize(
    "text,expected", [("all", None), (None, None), ("1,2", [1, 2]), ("3", [3]), (2, [2]), ([1, 4], [1, 4])]
)
def test_folds_parse_the_same_from_params_cli_and_dag(text, expected):
    assert parse_folds(text) == expected


def test_bad_folds_are_one_clear_error():
    with pytest.raises(UsageError, match="folds must be 'all' or comma-separated integers"):
        parse_folds("1,two")
