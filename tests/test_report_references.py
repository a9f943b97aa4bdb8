"""The report's remainder: each score beside the closest paper number, labelled as what it is; "±" as the sample
standard deviation (ddof 1) with n; selection points on the loss plot; the CSVs `dvc plots show` draws."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from matplotlib.collections import PathCollection
from report_metrics import metrics_json, write_metrics

from xkd.evaluation import verdict
from xkd.evaluation.plot_data import write_plot_data
from xkd.evaluation.report import paper_reference, render
from xkd.evaluation.summary import headline, write_headline
from xkd.tracking.plots import plot_loss_curves


def _metrics(dataset: str, features: str, scores: list[float], preset: str = "tiny", **extra) -> dict:
    # std with ddof 0, as metrics.json held before: the report must not reuse it
    old = {"std": float(np.std(scores)), "paper_style": {"mean": float(np.mean(scores)), "std": 0.0, "rule": "test"}}
    return metrics_json(dataset, features, scores, preset=preset, **{**old, **extra})


def _row(text: str, start: str) -> str:
    (row,) = [line for line in text.splitlines() if line.startswith(start)]
    return row


def test_every_score_stands_beside_the_closest_paper_number_labelled_as_what_it_is(tmp_path):
    pretrain = tmp_path / "pretrain"
    pretrain.mkdir()
    config = {"model": {"preset": "tiny", "epochs": 800}, "train": {"max_steps": 24}}
    (pretrain / "config.yaml").write_text(yaml.safe_dump(config))
    found = write_metrics(
        tmp_path / "m",
        {
            "esc10-svm": _metrics("esc10", "encoder", [60, 70]),
            "esc10-svm-random-init": _metrics("esc10", "random-init", [50, 52]),
            "esc50-svm": _metrics("esc50", "encoder", [88, 90, 89, 91, 87], preset="base"),
        },
    )
    text = render(found, pretrain)
    esc10 = _row(text, "| esc10 | svm | xkd student |")
    assert esc10.endswith(
        "| ESC-50 svm 89.4: XKD ViT-B pretrained 800 epochs on Kinetics-400 (Table 8); not this setting: other "
        "dataset (ESC-10 is the 10-class subset of ESC-50 (50 classes)); tiny encoder, not ViT-B; pretrained 24 "
        "steps here |"
    )
    assert _row(text, "| esc10 | svm | random init").endswith("| - (a control: the paper reports none) |")
    # the paper's own dataset, protocol and encoder size: labelled the same setting (the schedule still differs)
    esc50 = [m for m in found if m["dataset"] == "esc50"][0]
    assert paper_reference(esc50)["text"] == (
        "ESC-50 svm 89.4: XKD ViT-B pretrained 800 epochs on Kinetics-400 (Table 8); the same dataset, protocol "
        "and encoder"
    )
    assert _row(text, "| esc50 | svm | xkd student |").endswith("not this setting: pretrained 24 steps here |")
    # a dataset with neither a paper row for the protocol nor a closest one gets no made-up number
    assert paper_reference({"dataset": "kinetics400", "protocol": "svm", "variant": "xkd"}) is None
    assert paper_reference({"dataset": "fsdd", "protocol": "svm", "variant": "xkd", "preset": "tiny"})["value"] == 89.4


def test_plus_minus_is_the_sample_std_over_folds_with_n_everywhere(tmp_path):
    scores = [60.0, 70.0, 65.0]
    m = _metrics("esc10", "encoder", scores)
    expected = float(np.std(scores, ddof=1))  # 5.0; ddof 0 would be 4.08
    assert headline(m) == {"top1": {"mean": 65.0, "std": round(expected, 2)}, "n_folds": 3}
    (group,) = verdict.group([m])
    assert group.std == pytest.approx(expected)  # recomputed from the folds, not the file's ddof-0 "std"
    assert verdict.group([_metrics("esc10", "encoder", [61.0])])[0].std == 0.0  # n = 1: nothing measured
    path = write_headline(m, tmp_path / "results" / "eval" / "esc10-svm.json")
    assert json.loads(path.read_text()) == headline(m) and len(path.read_text()) < 200  # human-sized
    text = render(write_metrics(tmp_path / "m", {"e": m}), None)
    assert "65.0 ± 5.0 top-1 (n = 3 folds)" in text
    assert "± = sample standard deviation (ddof 1) over the n folds given beside it" in text
    assert "xkd student, 65.0 ± 5.0" in text  # the verdict line uses the same spread


SELECTION = {
    "candidates": [
        {"checkpoint": "ckpt-00000002", "step": 2, "role": "student", "val_loss": 5.5},
        {"checkpoint": "ckpt-00000002", "step": 2, "role": "teacher", "val_loss": 7.0},
        {"checkpoint": "ckpt-00000004", "step": 4, "role": "student", "val_loss": 4.5},
        {"checkpoint": "ckpt-00000004", "step": 4, "role": "teacher", "val_loss": 6.5},
    ],
    "winner": {"checkpoint": "ckpt-00000004", "step": 4, "role": "student", "val_loss": 4.5},
}


def _pretrain(tmp_path):
    pre = tmp_path / "pretrain"
    pre.mkdir()
    rows = [
        {"step": s, "total": 6.0 - s / 4, "rec_v": 1.0, "rec_a": 1.1, "kd": 30.0, "mmd_student": 3.0}
        for s in range(1, 5)
    ]
    (pre / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return pre


def test_the_loss_plot_shows_each_checkpoint_selection_scored_and_the_chosen_one(tmp_path, monkeypatch):
    from xkd.tracking import plots

    drawn = []  # the figure plot_loss_curves closes after saving it, kept for inspection
    monkeypatch.setattr(plots.plt, "close", drawn.append)
    png = plot_loss_curves(_pretrain(tmp_path) / "metrics.jsonl", tmp_path / "loss.png", SELECTION)
    total = drawn[0].axes[0]
    assert total.get_title().startswith("total")
    points = {
        c.get_label(): sorted(map(tuple, c.get_offsets().tolist()))
        for c in total.collections
        if isinstance(c, PathCollection)
    }
    assert points == {
        "held-out loss, student (selection)": [(2.0, 5.5), (4.0, 4.5)],
        "held-out loss, teacher (selection)": [(2.0, 7.0), (4.0, 6.5)],
        "selected: student step 4": [(4.0, 4.5)],
    }
    assert png.stat().st_size > 5000


def test_plot_data_holds_the_losses_the_selection_and_every_fold(tmp_path):
    pre = _pretrain(tmp_path)
    found = write_metrics(tmp_path / "m", {"esc10-svm": _metrics("esc10", "encoder", [60, 70])})
    loss, selection, folds = write_plot_data(found, tmp_path / "plots", pretrain=pre, selection=SELECTION)
    read = lambda p: list(csv.DictReader(p.open()))  # noqa: E731
    assert [r["step"] for r in read(loss)] == ["1", "2", "3", "4"] and read(loss)[0]["total"] == "5.75"
    assert [(r["step"], r["role"], r["selected"]) for r in read(selection)] == [
        ("2", "student", "0"),
        ("2", "teacher", "0"),
        ("4", "student", "1"),
        ("4", "teacher", "0"),
    ]
    assert [(r["fold"], r["score"]) for r in read(folds)] == [
        ("esc10-svm fold 1", "60.0"),
        ("esc10-svm fold 2", "70.0"),
    ]
    # without a pretraining run or a selection, the files still exist (dvc.yaml declares them), header only
    empty = write_plot_data(found, tmp_path / "bare")
    assert [p.read_text().count("\n") for p in empty] == [1, 1, 3]
