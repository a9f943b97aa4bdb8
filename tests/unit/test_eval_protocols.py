"""xkd.evaluation.protocols: hyper-parameters are chosen on the validation carve, never on the test fold;
the test-fold choice is only reported beside it (paper_style). Plus top-k on a known example."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xkd.evaluation import protocols

N_TRAIN, N_TEST, N_VAL = 12, 7, 4  # distinct sizes tell the scorers which split they are scoring


def _data(seed=0, classes=3, views=2, dim=5):
    g = torch.Generator().manual_seed(seed)
    y_train = np.arange(N_TRAIN) % classes
    y_test = np.arange(N_TEST) % classes
    train = {"train": torch.randn(N_TRAIN, views, dim, generator=g), "test": torch.randn(N_TRAIN, 3, dim, generator=g)}
    test = {"test": torch.randn(N_TEST, 3, dim, generator=g)}
    return train, y_train, test, y_test, np.arange(N_VAL, N_TRAIN), np.arange(N_VAL)


def _perfect(y: np.ndarray, classes: int, right: bool) -> np.ndarray:
    """Scores whose top-1 is the label (right) or always the next class (wrong)."""
    target = y if right else (y + 1) % classes
    return np.eye(classes)[target]


def test_topk_on_a_known_example():
    scores = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5], [0.1, 0.3, 0.6]])
    labels = np.array([2, 0, 1, 0])  # ranked 2nd, 1st, 2nd, 3rd
    assert protocols.topk(scores, labels, 1) == 25.0
    assert protocols.topk(scores, labels, 2) == 75.0
    assert protocols.topk(scores, labels, 3) == 100.0


def test_svm_c_is_chosen_on_the_validation_carve_not_the_test_fold(monkeypatch):
    train, y_train, test, y_test, fit, val = _data()
    calls = []

    def scores(train_x, train_y, test_x, c, seed):
        # C=0.1 is right on the validation carve only, C=10 on the test fold only
        calls.append((len(train_x), len(test_x), c))
        if len(test_x) == N_VAL:
            return _perfect(y_train[val], 3, right=c == 0.1)
        assert len(test_x) == N_TEST and len(train_x) == N_TRAIN  # refit on the whole training split
        return _perfect(y_test, 3, right=c == 10.0)

    monkeypatch.setattr(protocols, "_svm_scores", scores)
    out = protocols.svm(train, y_train, test, y_test, fit, val, grid=[0.01, 0.1, 1.0, 10.0])
    assert out["hparams"] == {"C": 0.1} and out["top1"] == 0.0  # what the val choice scores on test
    assert out["paper_style"] == {"top1": 100.0, "hparams": {"C": 10.0}}
    assert out["val_top1"] == {0.01: 0.0, 0.1: 100.0, 1.0: 0.0, 10.0: 0.0}
    # the validation SVMs never see a validation sample in training
    assert {(n, m) for n, m, _ in calls} == {(N_TRAIN - N_VAL, N_VAL), (N_TRAIN, N_TEST)}
    with pytest.raises(ValueError, match="validation carve is empty"):
        protocols.svm(train, y_train, test, y_test, fit, [], grid=[1.0])


def test_svm_ties_on_val_take_the_stronger_regularisation_and_real_svm_is_consistent():
    train, y_train, test, y_test, fit, val = _data(seed=1)
    out = protocols.svm(train, y_train, test, y_test, fit, val, grid=[0.001, 0.1, 10.0])
    best = max(out["val_top1"].values())
    assert out["hparams"]["C"] == min(c for c, v in out["val_top1"].items() if v == best)
    assert out["top1"] == out["test_top1_by_C"][out["hparams"]["C"]]
    assert out["paper_style"]["top1"] == max(out["test_top1_by_C"].values()) >= out["top1"]


def test_probe_epoch_is_chosen_on_the_validation_carve_not_the_test_fold(monkeypatch):
    train, y_train, test, y_test, fit, val = _data()
    val_curve, test_curve = [10.0, 50.0, 90.0, 90.0, 60.0], [95.0, 40.0, 30.0, 35.0, 20.0]
    seen = {"val": 0, "test": 0}

    def score(head, views, y, n_classes, multilabel):
        split = "val" if len(views) == N_VAL else "test"
        seen[split] += 1
        return (val_curve if split == "val" else test_curve)[seen[split] - 1]

    monkeypatch.setattr(protocols, "_score", score)
    out = protocols.linear(train, y_train, test, y_test, fit, val, epochs=5, lr=1e-2)
    assert seen == {"val": 5, "test": 5}
    assert out["hparams"]["epoch"] == 3  # best val (ties: the earlier epoch), never the test peak at epoch 1
    assert out["top1"] == 30.0 and out["paper_style"] == {"top1": 95.0, "hparams": {"epoch": 1}}


def test_probe_learns_a_separable_problem():
    g = torch.Generator().manual_seed(0)
    y_train, y_test = np.arange(40) % 2, np.arange(10) % 2
    centre = torch.tensor([[-3.0, 0.0], [3.0, 0.0]])  # two well separated classes

    def views(y, k):
        return centre[torch.as_tensor(y)][:, None] + 0.5 * torch.randn(len(y), k, 2, generator=g)

    train = {"train": views(y_train, 2), "test": views(y_train, 3)}
    test = {"test": views(y_test, 3)}
    out = protocols.linear(train, y_train, test, y_test, np.arange(10, 40), np.arange(10), epochs=10, lr=0.05, batch=8)
    assert out["top1"] == 100.0 and 1 <= out["hparams"]["epoch"] <= 10
