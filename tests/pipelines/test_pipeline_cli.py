"""`python -m pipelines.xkd_pipeline`: help is fast (no torch, mlflow or kfp import) and shows every default; bad
input is one `error:` line and exit status 2."""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import xkd_pipeline as xp

REPO = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "mlflow", "kfp"}  # seconds of import time each; `--help` needs none of them


def imported_modules(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pipelines.xkd_pipeline", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # `import time: <self us> | <cumulative us> | <indented dotted name>`, one line per imported module
    names = {m[1].split(".")[0] for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", done.stderr, re.M)}
    return done, names


@pytest.mark.parametrize("cmd", [[], ["compile"], ["run-local"], ["submit"]])
def test_help_imports_no_torch_mlflow_or_kfp(cmd):
    done, names = imported_modules(*cmd, "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m pipelines.xkd_pipeline"), done.stderr
    assert "pipelines" in names and "argparse" in names  # the parse of -X importtime works
    assert not HEAVY & names, sorted(HEAVY & names)


def subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in xp.parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_option_has_help_showing_its_default():
    assert set(subcommands()) == {"compile", "run-local", "submit"}
    for name, parser in subcommands().items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            text = formatter._expand_help(action) if action.help else ""
            assert text, (name, action.option_strings)
            if not action.required:
                assert re.search(r"\(default: [^)]+\)", text), (name, action.option_strings, text)
                assert "(default: None)" not in text, (name, action.option_strings, text)


def test_help_shows_the_defaults_a_user_needs():
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.xkd_pipeline", "run-local", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    flat = " ".join(out.split())
    assert "(default: tiny)" in flat and "(default: outputs/kfp-local)" in flat
    assert "(default: params.yaml pretrain.max_steps; 0 = the config's full schedule)" in flat


def test_compile_cli_refuses_an_unpinned_image_in_one_line(tmp_path, capsys):
    assert xp.main(["compile", "--output", str(tmp_path / "x.yaml"), "--image", "xkd:latest"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: image 'xkd:latest' must be pinned")
    assert not (tmp_path / "x.yaml").exists()


def test_submit_cli_refuses_a_malformed_set_in_one_line(capsys):
    args = ["submit", "--host", "http://127.0.0.1:9", "--image", "xkd:0.1.0", "--set", "nodes4"]
    assert xp.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --set 'nodes4': expected NAME=VALUE (VALUE as JSON for numbers, lists, dicts)"]


def test_submit_cli_refuses_an_unpinned_image_set_as_a_parameter(capsys):
    args = ["submit", "--host", "http://127.0.0.1:9", "--image", "xkd:0.1.0", "--set", "image=xkd:latest"]
    assert xp.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: image 'xkd:latest' must be pinned")
