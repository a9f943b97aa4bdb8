"""The report step is the pipeline's fan-in: it logs the report to the parent run and completes that run."""

from __future__ import annotations

import json

import mlflow
from matplotlib.collections import PathCollection
from report_metrics import metrics_json, write_metrics

from components.report import run as report
from xkd.evaluation.report import plot_folds, plot_scores, render
from xkd.tracking import runs as tracking


def test_report_completes_the_pipeline_parent_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_PARENT_RUN_ID", raising=False)
    fold = {"fold": 1, "top1": 60.0, "hparams": {"C": 1.0}, "selected_on": "val", "paper_style": {"top1": 61.0}}
    metrics = {
        "dataset": "esc10",
        "protocol": "svm",
        "role": "student",
        "features": "encoder",
        "metric": "top1",
        "variant": "xkd",
        "folds": [fold],
        "mean": 60.0,
        "std": 0.0,
        "paper_style": {"mean": 61.0, "std": 0.0, "rule": "test"},
        "wall_s": 1.0,
    }
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "metrics.json").write_text(json.dumps(metrics))
    parent = tracking.pipeline_parent()  # what the first step of a pipeline run does
    assert mlflow.MlflowClient().get_run(parent).info.status == "RUNNING"
    report([str(tmp_path / "m")], str(tmp_path / "r"))
    run = mlflow.MlflowClient().get_run(parent)
    assert run.info.status == "FINISHED"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent, "report")}
    assert {"report/report.md", "report/scores.png"} <= artifacts
    text = (tmp_path / "r" / "report.md").read_text()
    assert text.startswith("# XKD reproduction report\n\n## Did it work?\n\n- **esc10 svm** (xkd student, 60.0 ± 0.0)")


# --- "did it work?": the verdict, the spread's definition and the plots, from small metrics.json files. The report
# is a pure function of the metrics files, so writing those files by hand is the input a user's run produces.


def _verdicts(text: str) -> list[str]:
    """The report's verdict lines: the bullets of the section that opens the report."""
    section = text.split("## Did it work?")[1].split("\n## ")[0]
    return [line for line in section.splitlines() if line.startswith("- ")]


def test_the_report_leads_with_learns_when_the_encoder_clearly_beats_random_init(tmp_path):
    found = write_metrics(
        tmp_path,
        {
            "enc": metrics_json("esc10", "encoder", [80, 82, 78, 81, 79]),  # 80.0 ± 1.6 (ddof 1: sqrt(10 / 4))
            "rnd": metrics_json("esc10", "random-init", [40, 42, 38, 41, 39]),  # 40.0 ± 1.6
            "mel": metrics_json("esc10", "logmel-stats", [60, 62, 58, 61, 59]),
            "shuf": metrics_json("esc10", "shuffled-labels", [10, 12, 8, 11, 9]),
        },
    )
    text = render(found, None)
    assert text.index("## Did it work?") < text.index("| dataset | protocol |")  # the answer comes first
    (line,) = _verdicts(text)
    assert line == (
        "- **esc10 svm** (xkd student, 80.0 ± 1.6): **learns**; random init 40.0 ± 1.6: margin +40.0 pts "
        "(needs > 1.6); log-mel statistics 60.0 ± 1.6: margin +20.0 pts; shuffled labels 10.0 ± 1.6: margin "
        "+70.0 pts; chance 10.0: margin +70.0 pts; n = 5 folds × 1 seed."
    )
    assert "more than the larger of the two standard deviations" in text  # the rule is stated


def test_a_margin_inside_the_spread_does_not_learn_and_margins_carry_their_sign(tmp_path):
    found = write_metrics(
        tmp_path,
        {
            "enc": metrics_json("esc10", "encoder", [70, 75, 65, 72, 68]),  # 70.0 ± 3.8
            "rnd": metrics_json("esc10", "random-init", [68, 72, 64, 70, 66]),  # 68.0 ± 3.2: +2.0 is inside 3.8
            "mel": metrics_json("esc10", "logmel-stats", [74, 74, 74, 74, 74]),
        },
    )
    (line,) = _verdicts(render(found, None))
    assert "**does not learn**" in line
    assert "random init 68.0 ± 3.2: margin +2.0 pts (needs > 3.8)" in line
    assert "log-mel statistics 74.0 ± 0.0: margin -4.0 pts" in line
    assert "shuffled labels: not run" in line  # a missing control is said to be missing, no number made up


def test_no_random_init_is_no_control_and_names_the_missing_controls(tmp_path):
    found = write_metrics(
        tmp_path,
        {
            "esc": metrics_json("esc10", "encoder", [80, 82, 78, 81, 79]),
            "ucf": metrics_json("ucf101", "encoder", [30, 32, 34], chance=100 / 101),
            "ucf-px": metrics_json("ucf101", "pixel-stats", [20, 21, 22], chance=100 / 101),
        },
    )
    esc, ucf = _verdicts(render(found, None))
    assert esc.startswith("- **esc10 svm** (xkd student, 80.0 ± 1.6): **no control**;")
    assert "random init: not run, so no verdict; log-mel statistics: not run; shuffled labels: not run" in esc
    assert "pixel" not in esc  # the control for video datasets is not asked of an audio dataset
    assert "**no control**" in ucf and "pixel statistics 21.0 ± 1.0: margin +11.0 pts" in ucf
    assert "n = 3 folds × 1 seed" in ucf


def test_seeds_of_one_evaluation_are_pooled_and_counted(tmp_path):
    found = write_metrics(
        tmp_path,
        {
            "enc0": metrics_json("esc10", "encoder", [78, 82], seed=0),  # seed means 80 and 84: 82.0 ± 2.8 over seeds
            "enc1": metrics_json("esc10", "encoder", [82, 86], seed=1),
            "rnd0": metrics_json("esc10", "random-init", [40, 44], seed=0),
            "rnd1": metrics_json("esc10", "random-init", [38, 42], seed=1),  # seed means 42 and 40: 41.0 ± 1.4
        },
    )
    text = render(found, None)
    (line,) = _verdicts(text)
    assert line.startswith("- **esc10 svm** (xkd student, 82.0 ± 2.8): **learns**; random init 41.0 ± 1.4: ")
    assert "margin +41.0 pts (needs > 2.8)" in line and "n = 2 folds × 2 seeds" in line


def test_the_spread_is_defined_under_the_table(tmp_path):
    text = render(write_metrics(tmp_path, {"enc": metrics_json("esc10", "encoder", [60, 70])}), None)
    table_end = text.index("| esc10 | svm | xkd student | 65.0 ± 7.1 top-1 (n = 2 folds)")
    assert text.index("± = sample standard deviation (ddof 1) over the n folds", table_end) > table_end


def _dashed(ax) -> list[tuple[float, ...]]:
    return [tuple(line.get_ydata()) for line in ax.lines if line.get_linestyle() == "--"]


def test_plots_draw_controls_apart_chance_dashed_folds_as_bars_and_the_smoke_test_alone(tmp_path):
    found = write_metrics(
        tmp_path / "m",
        {
            "enc": metrics_json("esc10", "encoder", [80, 82, 78, 81, 79]),
            "rnd": metrics_json("esc10", "random-init", [40, 42, 38, 41, 39]),
            "ucf": metrics_json("ucf101", "encoder", [30, 32, 34], chance=100 / 101),
            "smoke": metrics_json("samples-av", "encoder", [20, 25], chance=12.5, smoke=True),
        },
    )
    fig = plot_scores(found, tmp_path / "scores.png")
    main, smoke = fig.axes
    assert "smoke" in smoke.get_title() and "smoke" not in main.get_title()
    ticks = [t.get_text().split("\n") for t in smoke.get_xticklabels()]
    assert ticks == [["samples-av svm", "xkd student"], ["paper: UCF101 svm", "(closest; not this setting)"]]
    assert sorted(_dashed(main)) == [(100 / 101, 100 / 101), (10.0, 10.0)] and _dashed(smoke) == [(12.5, 12.5)]
    bars = {p.get_height(): p for p in main.patches}
    assert bars[80.0].get_hatch() is None and bars[40.0].get_hatch()  # the control is hatched, the method not
    assert bars[80.0].get_facecolor() != bars[40.0].get_facecolor()
    assert len(bars[40.0].get_facecolor()) == 4 and len(set(bars[40.0].get_facecolor()[:3])) == 1  # grey
    assert 83.8 in bars  # the paper's ucf101 svm number beside ours
    points = sorted(y for c in main.collections if isinstance(c, PathCollection) for _, y in c.get_offsets())
    assert points == sorted([80, 82, 78, 81, 79, 40, 42, 38, 41, 39, 30, 32, 34])  # every fold, as a point
    folds = plot_folds(found, tmp_path / "folds.png")
    for ax in folds.axes:
        assert all(len(line.get_xdata()) == 2 and line.get_linestyle() == "--" for line in ax.lines)  # no joined folds
    # one bar per fold, side by side, labelled with its fold number; controls hatched
    heights = [(p.get_height(), bool(p.get_hatch())) for p in folds.axes[0].patches]
    assert sorted(heights) == sorted(
        [(s, False) for s in [80, 82, 78, 81, 79, 30, 32, 34]] + [(s, True) for s in [40, 42, 38, 41, 39]]
    )
    labels = [t.get_text() for t in folds.axes[0].texts]
    assert labels == ["1", "2", "3", "4", "5"] * 2 + ["1", "2", "3"]
    assert sorted(_dashed(folds.axes[0])) == [(100 / 101, 100 / 101), (10.0, 10.0)]
    assert (tmp_path / "scores.png").stat().st_size > 5000 and (tmp_path / "folds.png").stat().st_size > 5000
