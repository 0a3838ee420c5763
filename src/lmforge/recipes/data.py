"""``lmforge data <verb>``: look at and version the output of ``lmforge prepare``.

    lmforge data diff runs/web-v1 runs/web-v2 [--json]     # what changed between two outputs
    lmforge data dvc configs/prepare.yaml [-o dvc.yaml]    # DVC stages; then `dvc repro`
    lmforge data report runs/web-v2                        # (re)write runs/web-v2/report/

Each verb takes its own arguments (``argv`` after the verb) and returns the exit code; a
user error (missing folder, not a prepare run, bad pipeline file) raises :class:`UserError`.
"""

from __future__ import annotations

import argparse
import json

from lmforge.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that raises UserError (printed by the CLI, exit 2) instead of exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message}\n{self.format_usage().strip()}")


def diff(argv: list[str]) -> int:
    """``lmforge data diff A B [--json]``: documents added / removed / changed, split sizes,
    distribution shifts and shard fingerprint changes between two prepare outputs."""
    parser = _Parser(prog="lmforge data diff", description=diff.__doc__)
    parser.add_argument("a", help="the older prepare run folder (or its data/ folder)")
    parser.add_argument("b", help="the newer prepare run folder (or its data/ folder)")
    parser.add_argument("--json", action="store_true", help="print the diff as JSON")
    args = parser.parse_args(argv)
    from lmforge.data.versions import diff_runs, format_diff

    result = diff_runs(args.a, args.b)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(format_diff(result), end="")
    return 0


def dvc(argv: list[str]) -> int:
    """``lmforge data dvc PIPELINE.yaml... [-o dvc.yaml]``: one DVC stage per pipeline file."""
    parser = _Parser(prog="lmforge data dvc", description=dvc.__doc__)
    parser.add_argument("pipelines", nargs="+", help="lmforge prepare pipeline files")
    parser.add_argument("-o", "--output", default="dvc.yaml", help="where to write dvc.yaml")
    args = parser.parse_args(argv)
    import importlib.util

    from lmforge.data.versions import write_dvc_yaml

    path = write_dvc_yaml(args.pipelines, args.output)
    print(f"lmforge: wrote {path} ({len(args.pipelines)} stage(s)); run `dvc repro` in its folder")
    if importlib.util.find_spec("dvc") is None:
        print("lmforge: DVC is not installed here: pip install dvc")
    return 0


def report(argv: list[str]) -> int:
    """``lmforge data report RUN``: (re)write RUN/report/ from the run's files."""
    parser = _Parser(prog="lmforge data report", description=report.__doc__)
    parser.add_argument("run", help="a lmforge prepare run folder")
    args = parser.parse_args(argv)
    from lmforge.data.report import write_report

    print(f"lmforge: wrote {write_report(args.run)}")
    return 0
