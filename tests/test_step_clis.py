"""Every step's command line: `--help` answers without loading torch or mlflow, and documents every option."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from xkd.paths import REPO

STEPS = sorted(p.stem for p in (REPO / "components").glob("*.py") if p.stem != "__init__")
HEAVY = ("torch", "mlflow", "matplotlib", "kfp", "sklearn")


def test_every_step_is_listed():
    assert {"extract_clips", "cache_spectrograms", "pretrain", "select_checkpoint", "evaluate", "report"} <= set(STEPS)


@pytest.mark.parametrize("step", STEPS)
def test_help_loads_no_heavy_library(step):
    probe = (
        "import contextlib, io, json, sys, runpy\n"
        f"sys.argv = ['{step}', '--help']\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    runpy.run_module('components.{step}', run_name='__main__')\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [], f"components.{step} --help imports these at start-up"


def _actions(ap: argparse.ArgumentParser):
    for action in ap._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)
        elif not isinstance(action, argparse._HelpAction):
            yield ap, action


@pytest.mark.parametrize("step", STEPS)
def test_every_option_has_help_and_shows_its_default(step):
    module = __import__(f"components.{step}", fromlist=["parser"])
    for ap, action in _actions(module.parser()):
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS or action.dest == "repo", f"{step}: {name} has no help"
        shown = ap.formatter_class("x")._get_help_string(action)
        has_default = not action.required and action.default not in (None, False, argparse.SUPPRESS)
        if has_default and action.option_strings:
            assert "%(default)" in shown, f"{step}: {name}'s help does not show its default {action.default!r}"
