"""Status lines and progress bars of every step: one logging setup, one progress-bar factory.

Status lines go through `logging` (logger `xkd`, on stderr) as `2026-01-31T12:00:00Z INFO xkd.<module>: message`:
UTC timestamps, so lines of pods in different zones sort together; level from `XKD_LOG_LEVEL` (default INFO).
`setup()` runs once per process: the step CLIs' `xkd.errors.cli` wrapper calls it, and `logger()` calls it too,
so a step called as a library (tests, the KFP shims) shows the same lines. The final `error: ...` line of a
usage error stays a plain line (`xkd.errors.cli`), as does a command's own result on stdout.

`progress(...)` is the one way to make a tqdm bar. On a terminal it is the usual redrawn bar. When stderr is a
file or a pipe (DVC, CI, `kubectl logs`), a redrawn bar is one line growing by ~100 characters per redraw
(37,000 characters after a pretraining run), so there the bar instead logs one ordinary line at most every
`XKD_PROGRESS_INTERVAL` seconds (default 30), plus its first and last state.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from tqdm import tqdm

ROOT = "xkd"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
LEVEL_ENV = "XKD_LOG_LEVEL"
INTERVAL_ENV = "XKD_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 30.0
LOG_NCOLS = 100  # width of a logged progress line (the bar shrinks to fit it)


class _TqdmAwareHandler(logging.Handler):
    """Writes each record through `tqdm.write` to the stderr of the moment (pytest swaps it), so that on a
    terminal a log line never lands in the middle of a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def setup(level: str | int | None = None) -> logging.Logger:
    """Configure the `xkd` logger once (later calls only change the level when one is given)."""
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _TqdmAwareHandler) for h in root.handlers):
        handler = _TqdmAwareHandler()
        formatter = logging.Formatter(FORMAT, DATE_FORMAT)
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
        root.addHandler(handler)
        root.propagate = False  # one line per record, whatever a library does to the root logger
        level = level or os.environ.get(LEVEL_ENV, "INFO")
    if level is not None:
        root.setLevel(level.upper() if isinstance(level, str) else level)
    return root


def logger(name: str) -> logging.Logger:
    """The logger of module `name` (a `components.*` module is filed under `xkd.` as well; `python -m` runs
    a step as `__main__`, which is named after its module instead)."""
    setup()
    if name == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        name = spec.name if spec is not None else "main"
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")


class _LogLines:
    """A file-like target for tqdm that turns each redraw into one log line (carriage returns, padding and
    repeats dropped)."""

    def __init__(self, log: logging.Logger):
        self.log, self.last = log, None

    def write(self, text: str) -> None:
        lines = [part.strip() for part in text.replace("\r", "\n").split("\n")]
        line = next((part for part in reversed(lines) if part), None)
        if line is not None and line != self.last:
            self.log.info(line)
            self.last = line

    def flush(self) -> None:
        pass


def progress_interval() -> float:
    raw = os.environ.get(INTERVAL_ENV)
    try:
        value = float(raw) if raw is not None else DEFAULT_INTERVAL_S
    except ValueError:
        value = DEFAULT_INTERVAL_S
    return value if value >= 0 else DEFAULT_INTERVAL_S


def progress(iterable=None, **kwargs) -> tqdm:
    """A tqdm bar on stderr (every tqdm argument passes through): redrawn on a terminal, logged lines elsewhere."""
    kwargs.pop("file", None)  # always stderr (status, never a command's output)
    kwargs.pop("dynamic_ncols", None)
    stream = sys.stderr
    if stream is not None and hasattr(stream, "isatty") and stream.isatty():
        return tqdm(iterable, file=stream, dynamic_ncols=True, **kwargs)
    interval = progress_interval()
    return tqdm(
        iterable,
        file=_LogLines(logger("progress")),
        mininterval=interval,
        maxinterval=max(interval, 10.0),
        ncols=LOG_NCOLS,
        ascii=True,
        **kwargs,
    )
