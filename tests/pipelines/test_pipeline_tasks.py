"""The `@dsl.component` task bodies: each makes exactly one call into a step's `run()` (or the library), and
passes its arguments through as `dvc repro` would (`max_steps=0` is the config's full schedule, not "unset")."""

import ast
import inspect
import textwrap

import pytest

from pipelines import tasks

pytestmark = pytest.mark.slow

COMPONENTS = {
    "mlflow_parent_run",
    "partition_inputs",
    "extract_clips",
    "cache_spectrograms",
    "merge_partitions",
    "extract_eval_clips",
    "cache_eval_spectrograms",
    "cache_eval_clip_spectrograms",
    "pretrain",
    "pretrain_trainjob",
    "select_checkpoint",
    "evaluate",
    "report",
}


def component_bodies():
    for name, obj in vars(tasks).items():
        fn = getattr(obj, "python_func", None)
        if fn is not None and fn.__module__ == tasks.__name__:
            yield name, ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]


def test_each_component_body_calls_exactly_one_step_function():
    bodies = dict(component_bodies())
    assert set(bodies) == COMPONENTS
    for name, fn in bodies.items():
        modules = {
            a.asname or a.name
            for n in ast.walk(fn)
            if isinstance(n, ast.ImportFrom) and n.module.split(".")[0] in ("components", "pipelines", "xkd")
            for a in n.names
        }
        calls = [
            n
            for n in ast.walk(fn)
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and isinstance(n.func.value, ast.Name)
            and n.func.value.id in modules
        ]
        assert len(calls) == 1, (name, [ast.unparse(c.func) for c in calls])
        assert calls[0].func.attr in ("run", "write_partitions", "merge", "parent_run_id"), name
        assert not [n for n in ast.walk(fn) if isinstance(n, (ast.If, ast.For, ast.While, ast.Try))], name


def _record(calls):
    def run(*args, **kwargs):
        calls.append(kwargs)
        return kwargs.get("output", args[3] if len(args) > 3 else None)

    return run


TRAIN = dict(
    config="configs/pretrain/tiny.yaml",
    clips="/data/c",
    spectrograms="/data/s",
    output="/data/outputs/pretrain",
    overrides=[],
    tracking_uri="sqlite:///x.db",
    mlflow_parent="p",
)


@pytest.mark.parametrize("max_steps", [0, 2])
def test_pretrain_task_passes_max_steps_through(monkeypatch, max_steps):
    import components.pretrain

    calls = []
    monkeypatch.setattr(components.pretrain, "run", _record(calls))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tasks.pretrain.python_func(max_steps=max_steps, **TRAIN) == TRAIN["output"]
    assert [c["max_steps"] for c in calls] == [max_steps]


@pytest.mark.parametrize("max_steps", [0, 2])
def test_trainjob_task_passes_max_steps_and_the_data_mount_through(monkeypatch, max_steps):
    from pipelines import k8s, trainjob

    mount_default = inspect.signature(trainjob.run).parameters["mount_path"].default
    calls = []
    monkeypatch.setattr(trainjob, "run", _record(calls))
    launch = dict(
        image="xkd:0.1.0",
        nodes=2,
        gpus_per_node=8,
        pvc_name="xkd-data",
        namespace="",
        runtime="torch-distributed",
        node_selector={},
        tolerations=[],
        mlflow_secret="mlflow-credentials",
        timeout_s=60,
        keep=False,
    )
    assert tasks.pretrain_trainjob.python_func(max_steps=max_steps, **TRAIN, **launch) == TRAIN["output"]
    assert [c["max_steps"] for c in calls] == [max_steps]
    assert calls[0].get("mount_path", mount_default) == k8s.DATA_MOUNT
    # the launched pods run `components.pretrain --max-steps 0`: the config's full schedule, as dvc.yaml passes it
    args = trainjob.pretrain_args("c.yaml", "c", "s", "o", max_steps)
    assert args[args.index("--max-steps") + 1] == str(max_steps)


def test_evaluate_task_publishes_its_scores_as_kfp_metrics(monkeypatch, tmp_path):
    """The KFP run page shows a Metrics artifact's scalars: the spec's mean, std and every fold's score."""
    from kfp.dsl import Artifact, Metrics, Model

    import components.evaluate

    folds = [{"fold": 1, "top1": 61.25, "top5": 90.0}, {"fold": 2, "top1": 70.0, "top5": 95.0}]

    def run(*args, **kwargs):  # the step's return value: metrics.json's content
        return {"metric": "top1", "mean": 65.625, "std": 4.375, "folds": folds}

    monkeypatch.setattr(components.evaluate, "run", run)
    scores = Metrics(name="scores", uri=str(tmp_path / "scores"))
    tasks.evaluate.python_func(
        spec={"dataset": "esc10", "protocol": "svm", "role": "student", "folds": "all", "preset": "tiny"},
        cache_root=str(tmp_path),
        tracking_uri="sqlite:///x.db",
        mlflow_parent="p",
        selection=Model(name="selection", uri=str(tmp_path / "selection")),
        metrics=Artifact(name="metrics", uri=str(tmp_path / "metrics")),
        scores=scores,
    )
    assert scores.metadata == {"mean_top1": 65.625, "std_top1": 4.375, "fold1_top1": 61.25, "fold2_top1": 70.0}


def test_report_task_publishes_report_md_as_a_markdown_artifact(monkeypatch, tmp_path):
    from kfp.dsl import Artifact, Markdown

    import components.report

    def run(metrics, output, **kwargs):  # writes report.md where the step does
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "report.md").write_text("# XKD report\n\n| dataset | top1 |\n| --- | --- |\n")
        return tmp_path / "out" / "report.md"

    monkeypatch.setattr(components.report, "run", run)
    md = Markdown(name="report_md", uri=str(tmp_path / "report_md"))
    tasks.report.python_func(
        metrics=[Artifact(name="m", uri=str(tmp_path / "m"))],
        pretrain_dir="/data/outputs/pretrain",
        tracking_uri="sqlite:///x.db",
        mlflow_parent="p",
        output=Artifact(name="output", uri=str(tmp_path / "out")),
        report_md=md,
    )
    assert (tmp_path / "report_md").read_text() == (tmp_path / "out" / "report.md").read_text()
