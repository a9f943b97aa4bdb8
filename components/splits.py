"""Check a copy of a dataset against the official split lists, or count a split's files.

    python -m components.splits validate --dataset NAME --root DIR [--split N] [--json OUT]
    python -m components.splits counts   --dataset NAME [--split N]

The lists, their provenance and the matching rules: `xkd/data/splits.py` and `data/splits/`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xkd.data.splits import DATASETS, counts, load_split, summary_line, validate
from xkd.errors import cli, step_parser
from xkd.log import logger

log = logger(__name__)


def parser() -> argparse.ArgumentParser:
    ap = step_parser("components.splits", __doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser(
        "validate", help="count which listed files a dataset copy has", formatter_class=ap.formatter_class
    )
    v.add_argument("--dataset", required=True, choices=DATASETS, help="which official lists")
    v.add_argument("--root", required=True, help="the dataset copy's folder")
    v.add_argument("--split", type=int, default=None, help="split / fold number (default 1)")
    v.add_argument("--json", help="write the full report (every missing file) to this JSON file")
    v.add_argument("--show", type=int, default=20, help="print at most this many missing files")
    c = sub.add_parser("counts", help="print the number of listed files per subset", formatter_class=ap.formatter_class)
    c.add_argument("--dataset", required=True, choices=DATASETS, help="which official lists")
    c.add_argument("--split", type=int, default=None, help="split / fold number (default 1)")
    return ap


@cli
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.cmd == "counts":
        print(json.dumps(counts(load_split(args.dataset, args.split))))
        return 0
    report = validate(args.dataset, args.root, args.split)
    if args.json:
        Path(args.json).write_text(json.dumps({k: v for k, v in report.items() if k != "matched"}, indent=2))
    for m in report["missing_files"][: args.show]:
        log.warning(f"missing [{m['subset']}] {m['path']}")
    if report["missing"] > args.show:
        log.warning(f"... and {report['missing'] - args.show} more")
    print(summary_line(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
