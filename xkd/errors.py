"""The command-line contract of every step: one-line errors a user can fix, and `--help` that shows defaults.

A step's `run()` raises `UsageError`; its `main` (wrapped by `cli`) prints `error: <message>` and exits 2.
Its parser comes from `step_parser`, so every option's help shows its default.
"""

from __future__ import annotations

import argparse
import functools
import sys

MLFLOW_PARENT_HELP = (
    "parent MLflow run id (default: MLFLOW_PARENT_RUN_ID, else outputs/mlflow_parent.json, else a new one)"
)


class UsageError(ValueError):
    """Bad arguments or a missing prerequisite; the message says what is wrong and what to do."""


def cli(main):
    """Wrap a CLI `main`: logging is set up (xkd.log); a UsageError becomes `error: <message>` on stderr (a plain
    line, no timestamp: the one line a user reads) and exit status 2."""

    @functools.wraps(main)
    def wrapper(argv=None) -> int:
        from xkd.log import setup

        setup()  # status lines with timestamps and levels (xkd.log), configured once at the step's entry
        try:
            return main(argv)
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return wrapper


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the docstring's usage block as written; appends "(default: X)" where there is a real default
    (not to required options, flags or options whose absence means "not given")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default in (None, False, argparse.SUPPRESS) or "%(default)" in action.help:
            return action.help
        return super()._get_help_string(action)


def step_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """The parser of `python -m <module>`, described by the step's module docstring."""
    return argparse.ArgumentParser(prog=f"python -m {module}", description=doc, formatter_class=_HelpFormatter)
