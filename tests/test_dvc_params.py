"""dvc.yaml and params.yaml agree: every value a stage reads from params.yaml is a tracked param of that stage
(so dvc.lock, `dvc params diff` and `dvc exp show` record it), every params.yaml key is read by the stage that
names it, stages have readable names, and the metrics and plot files are small files git commits."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from xkd.paths import REPO

_VAR = re.compile(r"\$\{([^}]+)\}")
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def _leaves(tree, prefix: str = "") -> set[str]:
    if not isinstance(tree, dict):
        return {prefix}
    return {leaf for k, v in tree.items() for leaf in _leaves(v, f"{prefix}.{k}" if prefix else str(k))}


def _lookup(dotted: str):
    value = PARAMS
    for key in dotted.split("."):
        value = value[key]
    return value


def _stages() -> dict[str, dict]:
    """{stage name: {"reads": params.yaml keys its cmd/deps interpolate, "params": what it declares}}, foreach
    stages expanded over their mapping (`${item.x}` of entry k reads <foreach path>.k.x)."""
    out = {}
    for name, stage in DVC["stages"].items():
        if "foreach" in stage:
            source = _VAR.fullmatch(stage["foreach"]).group(1)
            items = [(f"{name}@{k}", stage["do"], f"{source}.{k}", k) for k in _lookup(source)]
        else:
            items = [(name, stage, None, None)]
        for key, body, item_path, item_key in items:
            text = yaml.safe_dump({k: body.get(k) for k in ("cmd", "deps", "outs", "metrics")})
            reads = set()
            for ref in _VAR.findall(text):
                if ref == "key":
                    continue
                reads.add(f"{item_path}{ref[4:]}" if ref.startswith("item.") else ref)
            declared = [str(p).replace("${key}", str(item_key)) for p in body.get("params", [])]
            out[key] = {"reads": reads, "params": declared}
    return out


STAGES = _stages()


def _covered(key: str, declared: list[str]) -> bool:
    return any(key == d or key.startswith(d + ".") for d in declared)


def test_every_value_a_stage_reads_from_params_yaml_is_a_declared_param_of_it():
    missing = {n: sorted(k for k in s["reads"] if not _covered(k, s["params"])) for n, s in STAGES.items()}
    missing = {n: m for n, m in missing.items() if m}
    assert not missing, f"declare these under the stage's params: {missing}"


def test_every_declared_param_is_read_by_its_stage_and_every_params_key_by_some_stage():
    for name, stage in STAGES.items():
        for declared in stage["params"]:
            unused = [leaf for leaf in _leaves(_lookup(declared), declared) if leaf not in stage["reads"]]
            assert not unused, f"{name} declares {unused} but its command never passes them"
    read = set().union(*(s["reads"] for s in STAGES.values()))
    assert _leaves(PARAMS) - read == set(), "params.yaml keys no stage passes to its command"


def test_stage_names_are_readable_and_each_spec_has_its_stage():
    names = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "stage", "list", "--name-only"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {f"evaluate@{k}" for k in PARAMS["eval"]["specs"]} <= set(names)
    assert not [n for n in names if re.search(r"@\d+$", n)], names  # no evaluate@0


def test_metrics_and_plot_data_are_uncached_files_outside_ignored_folders():
    declared = []  # (path, options) of every metrics file and every out under results/
    for stage in DVC["stages"].values():
        body = stage.get("do", stage)
        entries = [(e, True) for e in body.get("metrics", [])] + [(e, False) for e in body.get("outs", [])]
        for entry, is_metric in entries:
            path, opts = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
            if is_metric or path.startswith("results/"):
                declared.append((path, opts or {}))
    assert declared and all(opts.get("cache") is False for _, opts in declared), declared
    for path, _ in declared:
        probe = path.replace("${key}", "esc10-svm")
        ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=REPO).returncode == 0
        assert not ignored, f"{probe} is git-ignored: `dvc metrics diff` / `dvc exp show` could not compare it"
    plotted = {f for p in DVC["plots"] for spec in p.values() for f in spec["y"]}
    assert plotted and all(any(f.startswith(path) for path, _ in declared) for f in plotted)
