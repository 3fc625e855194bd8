"""``disel-tradeoff``: a ``disel.tradeoff/1`` table (Figures 2 and 3) from training runs and their per-checkpoint
tables (fine-tuning and retention), :func:`disel.experiments.tables.tradeoff_table_from_runs` written to ``--out``.

    disel-tradeoff --runs-dir runs_math --ft-evaluator gsm8k --retention-evaluator lm-eval --out tradeoff_llm.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="disel-tradeoff", allow_abbrev=False, description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--runs-dir", type=Path, help="folder of runs (sub-folders with train_result.json)")
    source.add_argument("--run", type=Path, nargs="+", help="run directories")
    parser.add_argument("--ft-evaluator", required=True, help="fine-tuning table: retention_<NAME>.json (e.g. gsm8k)")
    parser.add_argument("--ft-metric", default="mean")
    parser.add_argument("--retention-evaluator", required=True, help="retention table: retention_<NAME>.json")
    parser.add_argument("--retention-metric", default="mean")
    parser.add_argument("--lower-is-better", action="store_true", help="the retention metric is a perplexity")
    parser.add_argument("--select", choices=["best", "last"], default="best", help="checkpoint per run (best FT)")
    parser.add_argument("--ft-name", help="axis name of the fine-tuning score")
    parser.add_argument("--retention-name", help="axis name of the retention score")
    parser.add_argument("--title", help="panel title")
    parser.add_argument("--out", type=Path, required=True, help="the table to write (JSON)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, build the table, write it; 2 with one line naming the file when a result file is missing or bad."""
    from ..schemas import ResultFileError
    from ..tables import find_run_dirs, tradeoff_table_from_runs
    from .preflight import report

    args = build_parser().parse_args(argv)
    try:
        table = tradeoff_table_from_runs(
            args.run or find_run_dirs(args.runs_dir), ft_evaluator=args.ft_evaluator, ft_metric=args.ft_metric,
            retention_evaluator=args.retention_evaluator, retention_metric=args.retention_metric,
            retention_higher_is_better=not args.lower_is_better, select=args.select,
            ft_metric_name=args.ft_name, retention_metric_name=args.retention_name, title=args.title,
        )  # fmt: skip
    except ResultFileError as error:
        return report("disel-tradeoff", error)
    table.write(args.out)
    print(f"wrote {args.out} ({len(table.rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
