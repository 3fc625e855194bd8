"""Every figure of the continual study (issue 18): accuracy matrices, AA / BWT / forgetting with intervals, and
the gate table of the DISeL arms (when one has finished).

    python -m paper_figs.run_all --continual paper_figs/continual/runs/results.json --out paper_figs/continual
"""

from __future__ import annotations

from collections.abc import Sequence

from disel.experiments.schemas import ResultFileError

from . import continual_gates, continual_matrices, continual_measures
from .continual_plots import continual_parser, read_results

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run each figure script on ``--results``; the first non-zero exit status ends it (the script said why)."""
    args = continual_parser(__doc__, "python -m paper_figs.continual_all").parse_args(argv)
    common = ["--results", str(args.results), "--out", str(args.out)]
    try:
        has_gates = bool(continual_gates.gate_arms(read_results(args.results)))
    except ResultFileError:
        has_gates = False  # the first script reports the missing or malformed file
    scripts = [continual_matrices, continual_measures, *([continual_gates] if has_gates else [])]
    for script in scripts:
        status = script.main(common)
        if status:
            return status
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
