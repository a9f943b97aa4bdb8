"""Errors a user can fix: raised by a step's `run()`, printed by its CLI as one line (exit status 2)."""

from __future__ import annotations

import functools
import sys


class UsageError(ValueError):
    """Bad arguments or a missing prerequisite; the message says what is wrong and what to do."""


def cli(main):
    """Wrap a CLI `main`: a UsageError becomes `error: <message>` on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(argv=None) -> int:
        try:
            return main(argv)
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return wrapper
