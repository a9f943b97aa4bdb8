"""`make proof` (pipelines/proof.py): the summary a reader trusts - scores per variant, seed and step read from the
evaluations' metrics.json, the spread over seeds, the margins over each control and the acceptance verdict."""

import json

import pytest

from pipelines import proof


def _metrics(path, mean):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.json").write_text(json.dumps({"mean": mean, "std": 1.0, "folds": []}))


def _checkpoint(run, step):
    bundle = run / "checkpoints" / f"ckpt-{step:08d}" / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text("{}")


@pytest.fixture
def finished(tmp_path):
    """Two seeds of xkd and mae-only probed at steps 100 and 200, and the controls."""
    scores = {
        "xkd": {"fsdd": (30.0, 34.0), "digits-video": (50.0, 54.0)},
        "mae-only": {"fsdd": (26, 28), "digits-video": (40, 44)},
    }
    for variant, per in scores.items():
        for seed in (0, 1):
            run = tmp_path / "runs" / variant / f"seed{seed}"
            for step in (100, 200):
                _checkpoint(run, step)
                for dataset, (first, last) in per.items():
                    value = (first if seed == 0 else last) - (5 if step == 100 else 0)
                    _metrics(run / "eval" / f"step{step:06d}" / dataset, value)
    for name, fsdd, video in (
        ("random-init", 24.0, 33.0),
        ("logmel-stats", 30.0, None),
        ("pixel-stats", None, 45.0),
        ("shuffled-labels", 10.5, 9.5),
    ):
        if fsdd is not None:
            _metrics(tmp_path / "controls" / name / "fsdd", fsdd)
        if video is not None:
            _metrics(tmp_path / "controls" / name / "digits-video", video)
    return tmp_path


def test_summary_takes_the_last_probed_step_with_the_spread_over_seeds(finished):
    summary = proof.collect(finished, ["xkd", "mae-only"], [0, 1])
    xkd = summary["final"]["xkd"]["fsdd"]
    assert xkd["step"] == 200 and xkd["seeds"] == 2
    assert xkd["mean"] == pytest.approx(32.0)
    assert xkd["std"] == pytest.approx(2.8284, abs=1e-3)  # ddof 1 over the two seeds
    assert summary["curves"]["xkd"]["digits-video"][100] == {0: 45.0, 1: 49.0}
    assert summary["controls"]["random-init"] == {"fsdd": 24.0, "digits-video": 33.0}
    assert summary["controls"]["logmel-stats"]["digits-video"] is None


def test_verdict_states_each_margin_against_the_acceptance_bar(finished):
    lines = proof.verdict(proof.collect(finished, ["xkd", "mae-only"], [0, 1]))
    assert lines[0] == "fsdd (audio): XKD 32.0 vs random init 24.0: +8.0 points (acceptance >= +10: NOT met)"
    assert lines[1] == "digits-video (video): XKD 52.0 vs random init 33.0: +19.0 points (acceptance >= +10: MET)"
    assert lines[2] == "fsdd: XKD 32.0 vs log-mel statistics 30.0: +2.0 points (target >= +5: NOT met)"


def test_an_unfinished_proof_says_so_instead_of_a_margin(tmp_path):
    lines = proof.verdict(proof.collect(tmp_path, ["xkd"], [0]))
    assert lines == [
        "fsdd: incomplete (no XKD or random-init score yet)",
        "digits-video: incomplete (no XKD or random-init score yet)",
    ]


def test_the_written_summary_has_the_table_and_the_plot(finished):
    proof.write_summary(finished, proof.collect(finished, ["xkd", "mae-only"], [0, 1]), wall_s=600)
    text = (finished / "proof.md").read_text()
    assert "| xkd | 32.0 ± 2.8 (n=2, step 200) | 52.0 ± 2.8 (n=2, step 200) |" in text
    assert "| control: random-init | 24.0 | 33.0 |" in text
    assert (finished / "learning_curves.png").stat().st_size > 10_000
    saved = json.loads((finished / "summary.json").read_text())
    assert saved["verdict"][1].endswith("MET)") and saved["wall_s"] == 600


def test_an_unknown_variant_is_one_clear_line(tmp_path):
    with pytest.raises(proof.UsageError, match="unknown mae-ony"):
        proof.run(str(tmp_path), [0], 1, 1, ["mae-ony"], 1)
